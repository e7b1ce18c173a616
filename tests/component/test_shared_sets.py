"""Sets on one base model served by one engine (lerpray.serve.shared_sets), without Ray: the replica's own request
path (the deployment's `_parse`) resolves each set's mix against its own anchors and places it in the shared row, and
rows of two sets in one batch give each set's requests the tokens of that set's own engine."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from engine_helpers import printable_only

from lerpray.model import Engine, ResolvedMix
from lerpray.serve import protocol
from lerpray.testing import TINY_ANCHORS, random_adapter, tiny_anchor_set, tiny_llama

pytestmark = pytest.mark.component

MAIN, SAME, OTHER = "lerpray", "lerpray-same", "lerpray-other"
PROMPTS = ["The weather", "Dear sir", "Hello"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, str]:
    """Two sets on one tiny base (the main one and SAME, other adapters) and OTHER on another base."""
    from lerpray.anchors import build_anchor_set
    from lerpray.model.base import model_identity

    tmp = tmp_path_factory.mktemp("shared-sets")
    main = tiny_anchor_set(tmp / "main")
    model = tiny_llama(seed=0)  # what tiny_anchor_set saved as tmp/main/base
    adapters = {name: random_adapter(model, tmp / "same-adapters" / name, seed=40 + i)
                for i, name in enumerate(TINY_ANCHORS)}  # fmt: skip
    build_anchor_set(model_identity(model, str(tmp / "main" / "base")), adapters, tmp / "same", overwrite=True)
    return {MAIN: str(main), SAME: str(tmp / "same"), OTHER: str(tiny_anchor_set(tmp / "other", seed=2))}


def _server(anchors: dict[str, str]):
    from lerpray.serve import deployment

    user_class = deployment.LerpServer.func_or_class.__mro__[1]  # the class under Serve's ingress wrapper
    server = user_class.__new__(user_class)
    args = {"anchors": anchors[MAIN], "sets": {n: u for n, u in anchors.items() if n != MAIN}, "max_batch_size": 8,
            "presets": {"upbeat": {"alpha": {"sentiment": 0.9}}}}  # fmt: skip
    user_class.__init__(server, args)  # the real loaders: load_engine and load_shared_engine
    return server


@pytest.fixture(scope="module")
def server(sets):
    server = _server(sets)
    yield server
    for live in server.sets.values():
        live.batcher.close()


def _parse(server, body: dict) -> list:
    """The deployment's own request handling (auth, body, schema, set, policy, mix), without Ray or HTTP."""
    from starlette.requests import Request

    raw = json.dumps({"max_tokens": 10, "temperature": 0, **body}).encode()

    async def receive() -> dict:
        return {"type": "http.request", "body": raw, "more_body": False}

    request = Request({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, receive)
    return asyncio.run(server._parse(request, "completions"))[2]


def test_sets_on_one_base_share_one_engine_and_others_keep_their_own(server):
    main, same, other = (server.sets[n] for n in (MAIN, SAME, OTHER))
    assert main.engine is same.engine and main.batcher is same.batcher and main.shared == same.shared == (MAIN, SAME)
    assert other.engine is not main.engine and other.shared == () and other.mixes.engine_block is None
    assert len(main.engine.layout.anchors) == 8 and main.engine.imodel.blocks == {"set0": range(4), "set1": range(4, 8)}
    assert (main.mixes.engine_block, same.mixes.engine_block) == ((0, 8), (4, 8))
    for live in (main, same, other):  # /v1/models: each set's own anchors, as with an engine of its own
        assert live.mixes.layout.anchors == TINY_ANCHORS and live.cards[0].anchors == list(TINY_ANCHORS)
    assert [c.id for c in main.cards] == [MAIN, "upbeat"] and same.cards[0].id == SAME


def test_rows_of_two_sets_in_one_batch_match_each_sets_own_engine(server, sets):
    bodies = [
        {"model": MAIN, "prompt": PROMPTS[0], "interpolation": {"alpha": {"sentiment": 0.8}}},
        {"model": SAME, "prompt": PROMPTS[1], "interpolation": {"alpha": {"sentiment": 0.2, "formality": 0.9}}},
        {"model": "upbeat", "prompt": PROMPTS[2]},
        {"model": f"{SAME}:formality=0.1", "prompt": PROMPTS[0]},
        {"model": SAME, "prompt": PROMPTS[2], "interpolation": {"schedule": [
            {"until": 3, "mix": {"alpha": {"sentiment": 1}}}, {"mix": {"alpha": {"sentiment": 0}}}]}},
    ]
    gens = [_parse(server, body)[0] for body in bodies]
    names = [MAIN, SAME, MAIN, SAME, SAME]
    for gen, name in zip(gens, names, strict=True):  # the shared row: the set's own coefficients in its block
        offset = server.sets[name].mixes.engine_block[0]
        assert len(gen.coeffs) == 8 and gen.mix.block == range(offset, offset + 4)
        assert all(c == 0 for i, c in enumerate(gen.coeffs) if i not in gen.mix.block)
    shared = server.sets[MAIN].engine
    hook = shared.model.lm_head.register_forward_hook(printable_only)
    try:
        together = [r.text for r in shared.generate(gens)]  # every row in one batch (8 slots)
    finally:
        hook.remove()
    for name in (MAIN, SAME):
        own = Engine.from_uri(sets[name], max_batch_size=8)
        own.model.lm_head.register_forward_hook(printable_only)
        mine = [i for i, n in enumerate(names) if n == name]
        unplaced = [replace(gens[i], mix=_own_mix(gens[i].mix), coeffs=()) for i in mine]
        assert [r.text for r in own.generate(unplaced)] == [together[i] for i in mine], name
    assert len(set(together)) > 1  # the sets' mixes do differ


def _own_mix(mix: ResolvedMix) -> ResolvedMix:
    """The mix on the set's own engine: each row cut back to the set's block."""
    return ResolvedMix(tuple((until, mix.own(c)) for until, c in mix.pieces), report=mix.report)


def test_resolved_mix_embed_places_every_row_and_maps_back():
    ramp = ResolvedMix(ramp=((1.0, 0.0), (0.0, 1.0), 4))
    placed = ramp.embed(2, 5)
    assert placed.at(2) == (0.0, 0.0, 0.5, 0.5, 0.0) and placed.own(placed.at(2)) == (0.5, 0.5)
    assert placed.widen((0.25, 0.75)) == (0.0, 0.0, 0.25, 0.75, 0.0) and ramp.widen((0.25, 0.75)) == (0.25, 0.75)
    constant = ResolvedMix.constant((0.3, 0.7), {"alpha": {"x": 0.7}})
    assert constant.embed(0, 3).coeffs == (0.3, 0.7, 0.0) and constant.embed(0, 3).report == constant.report
    with pytest.raises(ValueError, match="does not fit at offset 2"):
        constant.embed(2, 3)
    with pytest.raises(ValueError, match="already embedded"):
        constant.embed(0, 3).embed(0, 4)


def test_a_new_version_of_one_shared_set_reloads_the_group_and_keeps_the_other_engine(server, sets, tmp_path):
    moved = tmp_path / "same"
    shutil.copytree(sets[SAME], moved)
    wanted = server.args.model_copy(update={"sets": {SAME: str(moved), OTHER: sets[OTHER]}})
    new = server._load_changed(wanted)
    try:
        assert list(new) == [MAIN, SAME, OTHER] and new[OTHER] is server.sets[OTHER]
        assert new[MAIN].engine is new[SAME].engine and new[MAIN].engine is not server.sets[MAIN].engine
        assert Path(new[SAME].args.anchors) == moved and new[MAIN].shared == (MAIN, SAME)
    finally:
        for name in (MAIN, SAME):
            new[name].batcher.close()
    assert protocol.pick(new, SAME) is new[SAME]


def test_a_set_that_fails_to_load_closes_the_shared_engine_started_beside_it(sets, monkeypatch):
    from lerpray.serve import shared_sets
    from lerpray.serve.config import ServeArgs
    from lerpray.serve.live import set_args

    groups = []
    start_group = shared_sets.start_group
    monkeypatch.setattr(shared_sets, "start_group", lambda *a: groups.append(start_group(*a)) or groups[-1])

    def broken(args):
        raise ValueError(f"no engine for {args.model_name}")

    wanted = set_args(ServeArgs(anchors=sets[MAIN], sets={SAME: sets[SAME], OTHER: sets[OTHER]}))
    with pytest.raises(ValueError, match=f"no engine for {OTHER}"):
        shared_sets.load_sets(wanted, {}, broken, None, shared_sets.serve_shared_engine)
    assert [list(g) for g in groups] == [[MAIN, SAME]] and groups[0][MAIN].batcher._closed

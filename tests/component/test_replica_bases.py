"""A multiplexed set replica's engines (lerpray.serve.replica_bases), without Ray: the sets Serve loads on a replica
share ONE engine over one copy of their base model (a PagedEngine whose pool holds them), rows of different sets in
one batch get each set's own engine's tokens, an unloaded set leaves the pool, a set on another base model gets an
engine of its own that closes with its last set, and a set the engine cannot hold is refused saying what to change."""

from __future__ import annotations

import asyncio

import pytest
from engine_helpers import printable_only
from test_paged_serve import NAMES, _run_all, assert_own_engine_texts
from test_paged_serve import sets as paged_sets  # noqa: F401 -- the fixture: three sets on one tiny base

from lerpray.model.paged_engine import PagedEngine
from lerpray.serve.config import ServeArgs
from lerpray.serve.live import set_args
from lerpray.serve.protocol import generation_request
from lerpray.serve.replica_bases import ReplicaBases, SetRefused
from lerpray.serve.schemas import CompletionRequest
from lerpray.testing import tiny_anchor_set

pytestmark = pytest.mark.component

OTHER = "lerpray-other"  # a set on another tiny base


@pytest.fixture(scope="module")
def sets(paged_sets, tmp_path_factory) -> dict[str, str]:  # noqa: F811
    return {**paged_sets, OTHER: str(tiny_anchor_set(tmp_path_factory.mktemp("other-base") / "set", seed=2))}


def _bases(sets: dict[str, str], **extra) -> ReplicaBases:
    args = ServeArgs(anchors=sets[NAMES[0]], sets={n: u for n, u in sets.items() if n != NAMES[0]},
                     max_batch_size=4, multiplex={"max_sets_per_replica": 3}, **extra)  # fmt: skip
    return ReplicaBases(set_args(args), args.multiplex.max_sets_per_replica, None)


def _request(live, i: int):
    parsed = CompletionRequest(prompt=["The weather", "Dear sir", "Hello"][i % 3], max_tokens=6, temperature=0,
                               interpolation={"alpha": {"sentiment": 0.1 + 0.15 * i, "formality": 0.9 - 0.1 * i}})
    return generation_request(parsed, live.args, live.mixes)


def test_a_replicas_sets_share_one_base_copy_and_answer_as_their_own_engines(sets):
    bases = _bases(sets)
    held = {name: bases.load(name) for name in NAMES}
    try:
        engine = held[NAMES[0]].engine
        assert isinstance(engine, PagedEngine) and bases.engines == [engine]  # one engine, one base model
        assert all(h.engine is engine and h.batcher is held[NAMES[0]].batcher for h in held.values())
        assert engine.pool.capacity == 12 and engine.pool.max_rank == 4  # room for 3 sets of 4 rank-4 anchors
        order = [NAMES[i % 3] for i in range(6)]
        gens = [_request(held[name], i) for i, name in enumerate(order)]
        assert [g.anchor_set for g in gens] == order
        hook = engine.imodel.model.lm_head.register_forward_hook(printable_only)
        try:
            texts = asyncio.run(_run_all(held[NAMES[0]].batcher, gens))  # rows of the three sets in one batch
        finally:
            hook.remove()
        assert sorted(engine.pool.sets) == sorted(NAMES) and sorted(engine.pool.resident) == sorted(NAMES)
        assert_own_engine_texts(sets, order, gens, texts)

        bases.release(NAMES[1], lambda: 0)  # Serve unloads a set: it leaves the pool at the engine's next step
        asyncio.run(_run_all(held[NAMES[0]].batcher, [gens[0]]))
        assert NAMES[1] not in engine.pool.sets and NAMES[1] not in engine.pool.resident
        again = bases.load(NAMES[1])  # loaded again: into the same engine, answering as before
        assert again.engine is engine and bases.engines == [engine]
        hook = engine.imodel.model.lm_head.register_forward_hook(printable_only)
        try:
            assert asyncio.run(_run_all(again.batcher, [gens[1]])) == [texts[1]]
        finally:
            hook.remove()
    finally:
        for name in NAMES:
            bases.release(name, lambda: 0)
    assert bases.engines == [] and held[NAMES[0]].batcher._closed  # the last set gone: the base is freed


def test_a_set_on_another_base_gets_its_own_engine_closed_with_its_last_set(sets):
    bases = _bases(sets)
    main, other = bases.load(NAMES[0]), bases.load(OTHER)
    try:
        assert other.engine is not main.engine and len(bases.engines) == 2
        assert other.engine.pool.sets == [OTHER] and main.engine.pool.sets == [NAMES[0]]
        bases.release(OTHER, lambda: 0)
        assert bases.engines == [main.engine] and other.batcher._closed and not main.batcher._closed
    finally:
        bases.release(NAMES[0], lambda: 0)


def test_a_set_the_engine_cannot_hold_is_refused_saying_what_to_change(sets):
    bases = _bases(sets, anchor_capacity=3)
    with pytest.raises(SetRefused, match="raise anchor_capacity to at least 4"):
        bases.load(NAMES[0])
    assert bases.engines == []  # nothing held: the base it loaded for the set is gone again


def test_a_set_removed_while_its_request_runs_leaves_the_pool_when_the_request_ends(sets):
    from lerpray.anchors import load_anchor_set
    from lerpray.model import GenerationRequest, SamplingParams
    from lerpray.model.loading import load_shared_engine

    engine = load_shared_engine({NAMES[0]: sets[NAMES[0]]}, anchor_capacity=8, max_batch_size=2)
    assert engine.register(NAMES[1], load_anchor_set(sets[NAMES[1]])) is None  # queued, applied at the next step
    request = GenerationRequest(coeffs=(0.5, 0.5, 0.0, 0.0), prompt="Hi", anchor_set=NAMES[1],
                                sampling=SamplingParams(max_tokens=4, ignore_eos=True))  # fmt: skip
    engine.add(request)
    engine.unregister(NAMES[1])
    engine.step()
    assert NAMES[1] in engine.pool.sets and NAMES[1] in engine.pool.resident  # its request still runs
    while engine.has_work():
        engine.step()
    assert engine.pool.sets == [NAMES[0]] and NAMES[1] not in engine.pool.resident

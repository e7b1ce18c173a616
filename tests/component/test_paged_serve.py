"""A replica whose sets page by use (`anchor_capacity` in the Serve config), without Ray: requests of more sets than
the engine holds at once, all in flight together through the replica's batcher, all complete with each set's own
engine's tokens; a set that can never be resident gets a 503 saying what to change."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from engine_helpers import printable_only
from test_shared_sets import PROMPTS, _parse

from lerpray.model import Engine, ResolvedMix
from lerpray.model.paged_engine import PagedEngine
from lerpray.serve.errors import to_api_error
from lerpray.testing import TINY_ANCHORS, random_adapter, tiny_anchor_set, tiny_llama

pytestmark = pytest.mark.component

NAMES = ("lerpray", "lerpray-b", "lerpray-c")


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, str]:
    """Three sets of 4 anchors on one tiny base."""
    from lerpray.anchors import build_anchor_set
    from lerpray.model.base import model_identity

    tmp = tmp_path_factory.mktemp("paged-serve")
    out = {NAMES[0]: str(tiny_anchor_set(tmp / "main"))}
    model = tiny_llama(seed=0)  # what tiny_anchor_set saved as tmp/main/base
    for s, name in enumerate(NAMES[1:]):
        adapters = {a: random_adapter(model, tmp / name / a, seed=40 + 10 * s + i) for i, a in enumerate(TINY_ANCHORS)}
        build_anchor_set(model_identity(model, str(tmp / "main" / "base")), adapters, tmp / name, overwrite=True)
        out[name] = str(tmp / name)
    return out


def _server(sets: dict[str, str], capacity: int):
    from lerpray.serve import deployment

    user_class = deployment.LerpServer.func_or_class.__mro__[1]  # the class under Serve's ingress wrapper
    server = user_class.__new__(user_class)
    user_class.__init__(server, {"anchors": sets[NAMES[0]], "sets": {n: sets[n] for n in NAMES[1:]},
                                 "max_batch_size": 4, "anchor_capacity": capacity})  # fmt: skip
    return server


@pytest.fixture(scope="module")
def server(sets):
    server = _server(sets, capacity=8)  # two of the three sets at once
    yield server
    server.sets[NAMES[0]].batcher.close()


async def _run_all(batcher, gens) -> list[str]:
    async def one(gen) -> str:
        return "".join(e.text for events in [x async for x in batcher.submit(gen)] for e in events)

    return list(await asyncio.gather(*(one(g) for g in gens)))


def test_requests_of_more_sets_than_the_capacity_all_complete_with_each_sets_own_tokens(server, sets):
    engine = server.sets[NAMES[0]].engine
    assert isinstance(engine, PagedEngine) and engine.pool.capacity == 8 and len(engine.layout.anchors) == 8
    assert engine.on_page == server.metrics.on_page_in
    order = [NAMES[i % 3] for i in range(9)]  # every set, interleaved: each page-in evicts the set not in use
    gens = [_parse(server, {"model": name, "prompt": PROMPTS[i % 3], "max_tokens": 6,
                            "interpolation": {"alpha": {"sentiment": 0.1 * i}}})[0]
            for i, name in enumerate(order)]  # fmt: skip
    assert all(g.anchor_set == n and len(g.coeffs) == 4 for g, n in zip(gens, order, strict=True))
    hook = engine.imodel.model.lm_head.register_forward_hook(printable_only)
    try:
        texts = asyncio.run(_run_all(server.sets[NAMES[0]].batcher, gens))
    finally:
        hook.remove()
    assert engine.pool.stats.page_ins >= 3 and engine.pool.stats.evictions >= 1 and not engine.busy()
    assert_own_engine_texts(sets, order, gens, texts)


def assert_own_engine_texts(sets: dict[str, str], order: list[str], gens: list, texts: list[str]) -> None:
    """Each paged request's text (`texts`, of set order[i]) is what the set's own engine gives it."""
    for name in dict.fromkeys(order):
        own = Engine.from_uri(sets[name], max_batch_size=4)
        own.model.lm_head.register_forward_hook(printable_only)
        mine = [i for i, n in enumerate(order) if n == name]
        unpaged = [replace(gens[i], anchor_set=None, mix=ResolvedMix(gens[i].mix.pieces, report=gens[i].mix.report))
                   for i in mine]  # fmt: skip
        assert [r.text for r in own.generate(unpaged)] == [texts[i] for i in mine], name


def test_a_set_larger_than_the_capacity_gets_a_503_saying_what_to_change(sets):
    server = _server(sets, capacity=3)
    try:
        gen = _parse(server, {"model": NAMES[1], "prompt": "Hi"})[0]
        with pytest.raises(Exception) as caught:
            asyncio.run(_run_all(server.sets[NAMES[1]].batcher, [gen]))
        error = to_api_error(caught.value)
        assert error.status == 503 and "raise anchor_capacity to at least 4" in str(caught.value)
        assert server.sets[NAMES[0]].batcher.healthy() is None  # the replica serves on
    finally:
        server.sets[NAMES[0]].batcher.close()

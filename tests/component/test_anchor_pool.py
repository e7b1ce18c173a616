"""Anchors paged by use (lerpray.model.anchor_pool, paged_engine): sets beyond the capacity are paged in on use into
free slots (any slots, not a block), the least recently used set not in use paged out; rows of paged sets in one
batch each equal PEFT `cat` over their own set, a reload gives the same outputs, and nothing fails for paging."""

from __future__ import annotations

import copy

import pytest
import torch
from peft_reference import peft_cat_logits
from test_multi_set import SETS as MULTI_SETS

from lerpray.model import Engine, GenerationRequest, SamplingParams, interpolate
from lerpray.model.anchor_pool import UnloadableSetError, build_pool
from lerpray.model.paged_engine import PagedEngine
from lerpray.steering import ResolvedMix
from lerpray.testing import anchor_set_from_adapters, random_adapter, tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.component

ATOL = 1e-5
SETS = {  # test_multi_set's two sets (ranks 2 to 8, anchors adapting different layers), and two more pairs
    **MULTI_SETS,
    "sales": {
        "tone.warm": {"r": 4, "lora_alpha": 4, "target_modules": ("q_proj", "v_proj"), "seed": 27},
        "tone.cold": {"r": 8, "lora_alpha": 8, "target_modules": ("o_proj", "gate_proj"), "seed": 28},
    },
    "hr": {
        "tone.warm": {"r": 2, "lora_alpha": 8, "target_modules": ("k_proj",), "seed": 29},
        "tone.cold": {"r": 4, "lora_alpha": 2, "target_modules": ("q_proj", "down_proj"), "seed": 30},
    },
}
MIXES = {"support": [0.3, 0.7], "legal": [1.0, 0.0, 0.5, -0.5], "sales": [1.5, -0.5], "hr": [0.0, 0.8]}
CAPACITY = 6  # support + legal, or legal + one pair


@pytest.fixture(scope="module")
def base():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def folders(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("paged")
    return {s: [random_adapter(base, root / s / name, **kw) for name, kw in anchors.items()]
            for s, anchors in SETS.items()}  # fmt: skip


@pytest.fixture(scope="module")
def anchor_sets(base, folders):
    return {s: anchor_set_from_adapters(base, dict(zip(SETS[s], folders[s], strict=True))) for s in SETS}


@pytest.fixture(scope="module")
def input_ids():
    return torch.randint(3, 384, (4, 6), generator=torch.Generator().manual_seed(2))  # [N, T]


def pool_of(base, anchor_sets, capacity=CAPACITY, **kw):
    return build_pool(copy.deepcopy(base), anchor_sets, capacity, **kw)


def logits(pool, rows, ids):
    """Logits of ids [N, T], row n under its set's own mix placed on the set's slots: rows = [(set, coeffs)]."""
    pool.imodel.set_coeffs([ResolvedMix.constant(c).embed(pool.resident[s], pool.capacity).coeffs for s, c in rows])
    with torch.no_grad():
        return pool.imodel(ids).logits


def test_paged_sets_take_any_free_slots_and_rows_of_different_sets_equal_peft_cat(base, folders, anchor_sets,
                                                                                  input_ids):  # fmt: skip
    pool = pool_of(base, anchor_sets)
    assert pool.max_rank == 8 and pool.place("support") == (0, 1) and pool.place("legal") == (2, 3, 4, 5)
    assert pool.place("sales", busy={"legal"}) == (0, 1)  # support was the least recently used set not in use
    pool.evict("sales")
    pool.place("support", busy={"legal"})
    pool.evict("legal")
    assert pool.place("hr") == (2, 3) and pool.place("legal", busy={"hr"}) == (0, 1, 4, 5)  # not a block
    rows = [("legal", MIXES["legal"]), ("hr", MIXES["hr"]), ("legal", [0.0, 0.0, 0.0, 1.0]), ("hr", [1.0, 0.0])]
    got = logits(pool, rows, input_ids)
    for n, (name, coeffs) in enumerate(rows):
        want = peft_cat_logits(base, folders[name], coeffs, input_ids[n : n + 1])
        torch.testing.assert_close(got[n : n + 1], want, rtol=0, atol=ATOL)


def test_a_set_evicted_and_paged_in_again_gives_identical_outputs(base, anchor_sets, input_ids):
    pool = pool_of(base, anchor_sets)
    rows = [("legal", MIXES["legal"]), ("legal", [0.2, 0.3, 0.0, 1.0])]
    pool.place("legal")
    first = logits(pool, rows, input_ids[:2])
    pool.place("support")
    pool.place("sales", busy={"support"})  # evicts legal
    assert "legal" not in pool.resident
    pool.place("legal", busy={"sales"})  # evicts support; legal lands on other slots
    assert pool.resident["legal"] != (0, 1, 2, 3)
    assert torch.equal(logits(pool, rows, input_ids[:2]), first)
    assert pool.stats.page_ins == 4 and pool.stats.evictions == 2 and pool.stats.loads["legal"] == 2


def test_a_resident_set_with_zero_coefficients_changes_nothing(base, anchor_sets, input_ids):
    alone, crowded = pool_of(base, anchor_sets), pool_of(base, anchor_sets)
    alone.place("support")
    crowded.place("sales")
    crowded.place("hr")
    crowded.place("support")
    rows = [("support", MIXES["support"]), ("support", [0.0, 1.0])]
    assert torch.equal(logits(crowded, rows, input_ids[:2]), logits(alone, rows, input_ids[:2]))


def test_the_least_recently_used_set_not_in_use_is_evicted_and_a_set_in_use_never(base, anchor_sets):
    pool = pool_of(base, anchor_sets)
    for name in ("support", "sales", "hr"):
        pool.place(name)
    pool.place("support")  # touched: now sales is the least recently used
    assert list(pool.resident) == ["sales", "hr", "support"]
    assert not pool.can_place("legal", busy={"support", "hr"})  # 4 anchors; only sales's 2 slots could go
    assert pool.place("legal", busy={"support", "hr"}) is None and pool.stats.evictions == 0
    assert pool.place("legal", busy={"support"}) is not None  # sales then hr go, least recently used first
    assert list(pool.resident) == ["support", "legal"] and pool.stats.evictions == 2


def test_a_set_that_can_never_be_resident_is_refused_with_what_to_change(base, anchor_sets, tmp_path):
    big = {f"a{i}.{p}": random_adapter(base, tmp_path / f"{i}{p}", r=2, seed=i * 2 + (p == "low"))
           for i in range(4) for p in ("high", "low")}  # fmt: skip
    pool = pool_of(base, {**anchor_sets, "big": anchor_set_from_adapters(base, big)}, max_rank=4)
    with pytest.raises(UnloadableSetError, match="8 anchors, more than this engine's anchor capacity of 6: raise "
                                                 "anchor_capacity to at least 8"):  # fmt: skip
        pool.place("big")
    with pytest.raises(UnloadableSetError, match="rank 8, more than the pool's 4 rank columns"):
        pool.place("legal")
    with pytest.raises(UnloadableSetError, match="no anchor set 'nope' in this engine"):
        pool.place("nope")
    engine = PagedEngine(Engine(pool.imodel, tiny_tokenizer(), max_batch_size=2), pool)
    request = GenerationRequest(coeffs=(1.0,) * 8, prompt="Hi", anchor_set="big")
    assert engine.ready(request)  # so the batcher adds it and gets the error at once
    with pytest.raises(UnloadableSetError, match="raise anchor_capacity"):
        engine.add(request)
    assert pool.place("support") == (0, 1) and not engine.has_work()


@pytest.mark.parametrize("decode_mode", ["eager", "bucket"])  # bucket: the CUDA graphs' function, run eagerly
def test_a_paged_engine_serves_more_sets_than_its_capacity_with_each_sets_own_tokens(base, anchor_sets, decode_mode):
    tokenizer = tiny_tokenizer()
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    order = ["support", "legal", "sales", "hr", "support", "hr", "legal", "sales"]
    requests = [GenerationRequest(coeffs=tuple(MIXES[s]), prompt=f"Hello {i}", sampling=params, request_id=str(i),
                                  anchor_set=s) for i, s in enumerate(order)]  # fmt: skip
    pages = []
    pool = pool_of(base, anchor_sets)
    paged = PagedEngine(Engine(pool.imodel, tokenizer, max_batch_size=3, decode_mode=decode_mode), pool,
                        on_page=lambda *a: pages.append(a))  # fmt: skip
    got = {r.request_id: r.text for r in paged.generate(requests)}
    for name in SETS:
        own = Engine(interpolate(copy.deepcopy(base), anchor_sets[name]), tokenizer, max_batch_size=3)
        mine = [r for r in requests if r.anchor_set == name]
        want = own.generate([GenerationRequest(coeffs=r.coeffs, prompt=r.prompt, sampling=params,
                                               request_id=r.request_id) for r in mine])  # fmt: skip
        assert [got[r.request_id] for r in mine] == [w.text for w in want]
    assert len(pages) == pool.stats.page_ins >= len(SETS) and pool.stats.evictions >= 1
    assert all(name in SETS and seconds >= 0 and resident <= 3 for name, seconds, _, resident in pages)
    assert not paged.busy() and not paged.has_work()

"""The engine's GPU path proven on the CPU: the decode function a CUDA graph captures, run eagerly over whole
buckets ("bucket" mode, padding rows included); logits kept the same way on every transformers 5.x; the KV cache
sized from a budget and allocated once; and no reference cycles, so a dropped engine frees its cache at once."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from engine_helpers import MIXED, ONE, PROMPTS, TWO, WILD, reference_greedy, req

from lerpray.model import Engine, EngineError, PromptTooLongError
from lerpray.model import step_inputs as step_inputs_module
from lerpray.model.cuda_graphs import length_buckets
from lerpray.model.kv_budget import KVCacheFullError
from lerpray.model.step_inputs import chunk_inputs
from lerpray.testing import tiny_tokenizer

pytestmark = pytest.mark.component

LONG = "a long prompt, " * 9  # 135 bytes: many chunks of 8


def drive(engine: Engine, schedule: dict[int, list], logprobs: dict | None = None) -> dict[str, list[int]]:
    """Step the engine, adding schedule[step] before that step; token ids (and event logprobs) per request."""
    tokens: dict[str, list[int]] = {}
    for step in range(1000):
        for r in schedule.get(step, []):
            engine.add(r)
            tokens[r.request_id] = []
        for event in engine.step():
            tokens[event.request_id].append(event.token_id)
            if logprobs is not None:
                logprobs.setdefault(event.request_id, []).append(event.logprob)
        if not engine.has_work() and step >= max(schedule):
            return tokens
    raise AssertionError("the engine did not finish")


def mid_prefill_above_decoding_rows(engine: Engine) -> tuple[dict, dict, list]:
    """Three rows decode in slots 0-2 (bucket 4) while a long prompt is prefilled 8 tokens a step in slot 3.
    Returns tokens and the log probabilities of the chosen tokens per request, and the requests."""
    short = [req(p, m, rid=f"s{i}", max_tokens=30, logprobs=0)
             for i, (p, m) in enumerate(zip(PROMPTS, [ONE, TWO, WILD], strict=True))]
    long = req(LONG, MIXED, rid="long", max_tokens=6, logprobs=0)
    logprobs: dict[str, list[float]] = {}
    tokens = drive(engine, {0: short, 3: [long]}, logprobs)
    assert engine._graphs.bucket(3) == 4  # the long prompt's slot 3 is a padding row of the decoding rows' bucket
    return tokens, logprobs, [*short, long]


def reference_logprobs(engine: Engine, request) -> tuple[list[int], list[float]]:
    steps: list[torch.Tensor] = []
    tokens = reference_greedy(engine, request, logprobs=steps)
    return tokens, [float(step[t]) for step, t in zip(steps, tokens, strict=True)]


def test_bucket_replay_with_a_prompt_mid_prefill_above_the_decoding_rows_matches_the_reference(imodel):
    """Padding rows of a bucket write to the scratch slot: the long prompt in slot 3, inside the decoding rows'
    bucket, keeps its position-0 keys and values, and every row equals its one-row reference."""
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=8, prefill_chunk=8, decode_mode="bucket")
    assert engine._graphs is not None and engine._graphs.captures == 0  # the bucket function, run eagerly
    tokens, logprobs, requests = mid_prefill_above_decoding_rows(engine)
    for r in requests:
        expected_tokens, expected_logprobs = reference_logprobs(engine, r)
        assert tokens[r.request_id] == expected_tokens, r.request_id
        assert logprobs[r.request_id] == pytest.approx(expected_logprobs, abs=1e-5), r.request_id


def test_padding_routed_to_its_own_slot_corrupts_the_prompt_mid_prefill(imodel, monkeypatch):
    """The test above can fail: padding rows that write position 0 of their own slot (what the graphs did before)
    overwrite the long prompt's first keys and values, and its tokens change."""

    def own_slot(rows, width, pad_id, scratch):
        ids, positions, writes = [pad_id] * width, [0] * width, list(range(width))
        for slot, token, position in rows:
            ids[slot], positions[slot] = token, position
        return ids, positions, writes

    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=8, prefill_chunk=8, decode_mode="bucket")
    monkeypatch.setattr("lerpray.model.engine.decode_inputs", own_slot)
    _, logprobs, requests = mid_prefill_above_decoding_rows(engine)
    _, expected = reference_logprobs(engine, requests[-1])
    assert max(abs(a - b) for a, b in zip(logprobs["long"], expected, strict=True)) > 1e-3
    assert step_inputs_module.decode_inputs([(1, 7, 5)], 4, 0, 9) == ([0, 7, 0, 0], [0, 5, 0, 0], [9, 1, 9, 9])


def test_bucket_eager_and_reference_agree_over_many_arrivals(imodel):
    """Rows arriving and finishing at different steps in 5 slots (buckets 1, 2, 4, 5): the bucket replay and the
    eager path give every row its reference tokens."""
    schedule = {0: [req(PROMPTS[0], ONE, rid="a", max_tokens=9), req("q", WILD, rid="b", max_tokens=3)],
                2: [req(LONG, MIXED, rid="c", max_tokens=5), req(PROMPTS[1], TWO, rid="d", max_tokens=12)],
                5: [req(PROMPTS[2], TWO, rid="e", max_tokens=7), req(LONG[:50], ONE, rid="f", max_tokens=4)]}
    results = {mode: drive(Engine(imodel, tiny_tokenizer(), max_batch_size=5, prefill_chunk=8, decode_mode=mode),
                           schedule) for mode in ("bucket", "eager")}
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=1)
    for r in (r for requests in schedule.values() for r in requests):
        assert results["bucket"][r.request_id] == results["eager"][r.request_id] == reference_greedy(engine, r)


def test_two_d_logits_to_keep_as_transformers_5_17_reads_it_is_never_passed(imodel, monkeypatch):
    """transformers 5.17 indexes hidden[:, keep] with a tensor keep [M, 1] and returns logits [M, M, 1, V]; the
    engine passes only an int, so a model that reads tensors that way still gives each row its own next token."""
    model = imodel.model
    forward = model.forward

    def forward_5_17(*args, logits_to_keep=0, **kwargs):
        if isinstance(logits_to_keep, torch.Tensor):
            out = forward(*args, logits_to_keep=0, **kwargs)
            out.logits = out.logits[:, logits_to_keep, :]  # [M, M, 1, V], as 5.17's hidden[:, keep, :] gives
            return out
        return forward(*args, logits_to_keep=logits_to_keep, **kwargs)

    monkeypatch.setattr(model, "forward", forward_5_17)
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=4)
    requests = [req(p, m, max_tokens=5) for p, m in zip(PROMPTS, [ONE, TWO, WILD], strict=True)]
    results = engine.generate(requests)
    monkeypatch.undo()
    for r, result in zip(requests, results, strict=True):
        assert result.completion_tokens == 5
        assert engine.tokenizer.encode(result.text, add_special_tokens=False) == reference_greedy(engine, r)


def test_prefill_padding_writes_only_the_scratch_slot_at_real_positions():
    ids, positions, writes = chunk_inputs([[5, 6, 7], [8]], [40, 2], [0, 3], pad_id=0, scratch=9, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]  # left-padded: every chunk ends in the last column
    assert positions.tolist() == [[40, 41, 42], [2, 2, 2]]  # padding takes its chunk's first position
    assert writes.tolist() == [[0, 0, 0], [9, 9, 3]]


def test_kv_cache_is_sized_from_the_budget_allocated_at_start_up_and_refuses_what_does_not_fit(imodel):
    probe = Engine(imodel, tiny_tokenizer(), max_batch_size=1)
    per_token = probe._cache.nbytes // (2 * probe._cache.capacity)  # one slot + the scratch slot
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=3, kv_cache_bytes=per_token * 4 * 100)
    assert engine.context_length == 100 and engine.model_context == 512
    assert engine._cache.nbytes == per_token * 4 * 100  # allocated before any request
    with pytest.raises(KVCacheFullError, match="holds 100 tokens per slot") as err:
        engine.add(req("x" * 96, ONE, max_tokens=8))
    assert isinstance(err.value, PromptTooLongError)
    with pytest.raises(PromptTooLongError, match="context length 512") as err:
        engine.add(req("x" * 600, ONE, max_tokens=8))
    assert not isinstance(err.value, KVCacheFullError)
    assert engine.generate([req("x" * 80, ONE, max_tokens=8)])[0].completion_tokens == 8  # 89 tokens fit 100
    with pytest.raises(EngineError, match="raise kv_cache_bytes"):
        Engine(imodel, tiny_tokenizer(), max_batch_size=3, kv_cache_bytes=per_token * 4)


def test_kv_cache_full_is_a_400_context_length_exceeded():
    from lerpray.serve.errors import to_api_error

    error = to_api_error(KVCacheFullError("the prompt has 96 tokens but at most 92 fit"), prompt_field="messages")
    assert (error.status, error.json()["error"]["code"], error.json()["error"]["param"]) == (
        400, "context_length_exceeded", "messages")


def test_a_dropped_engine_frees_its_cache_without_a_garbage_collection(imodel):
    gc.disable()
    try:
        engine = Engine(imodel, tiny_tokenizer(), max_batch_size=2, decode_mode="bucket")
        engine.generate([req(PROMPTS[0], ONE, max_tokens=3)])
        cache, graphs = weakref.ref(engine._cache), weakref.ref(engine._graphs)
        del engine
        assert cache() is None and graphs() is None
    finally:
        gc.enable()


def test_graph_mode_needs_cuda_and_unknown_modes_are_refused(imodel):
    for mode in ("graph", "replay"):
        with pytest.raises(EngineError, match="decode_mode must be one of"):
            Engine(imodel, tiny_tokenizer(), decode_mode=mode)
    assert length_buckets(512) == [256, 512] and length_buckets(1000) == [256, 512, 1000]
    assert length_buckets(100) == [100]


def test_prefill_padding_needs_no_cache_room_past_the_real_tokens(imodel, monkeypatch):
    """A 41-token prompt with max_tokens 1 fills a 42-token context exactly. Its last chunk is prefilled beside a
    longer chunk of another prompt, so it carries padding queries; had they taken the positions after its end (as
    before), they would need room past position 42. They write to the scratch slot at real positions, so the cache
    holds exactly the context and every row matches its reference."""
    import lerpray.model.engine as engine_module

    reach = []

    def spy(chunks, starts, *args):
        reach.append(max(start + max(len(c) for c in chunks) for start in starts))
        return chunk_inputs(chunks, starts, *args)

    monkeypatch.setattr(engine_module, "chunk_inputs", spy)
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=3, prefill_chunk=8, context_length=42)
    assert engine._cache.capacity == 42
    requests = [req("q", ONE, rid="bg", max_tokens=20), req("y" * 41, TWO, rid="full", max_tokens=1),
                req("z" * 12, WILD, rid="late", max_tokens=2)]
    assert len(engine.encode(requests[1])) == 41
    tokens = drive(engine, {0: requests[:1], 1: requests[1:2], 5: requests[2:]})
    assert max(reach) > 42  # the padded chunk happened
    for r in requests:
        assert tokens[r.request_id] == reference_greedy(engine, r), r.request_id


def test_cpu_cache_storage_takes_memory_only_where_rows_write():
    """The CPU budget is address space: a 1 GiB cache adds almost nothing to the process until it is written."""
    import psutil

    from lerpray.model.kv_cache import _zeros

    process = psutil.Process()
    before = process.memory_info().rss
    keys = _zeros(torch.empty(1, dtype=torch.bfloat16), (4, 2, 2**26, 1))  # 1 GiB of zeros
    assert keys.dtype == torch.bfloat16 and keys.shape == (4, 2, 2**26, 1) and keys.is_contiguous()
    keys[1, 0, :1000] = 1.5
    assert process.memory_info().rss - before < 64 * 2**20
    assert float(keys[1, 0, :1001].float().sum()) == 1500.0 and not keys[3, 1, -4096:].any()  # zeros elsewhere

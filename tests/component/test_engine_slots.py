"""Engine v2 mechanics on the tiny Llama: the slot KV cache (written in place, slots reused), chunked prefill
interleaved with decode, aborts mid-prefill, shared shrink groups, and refusing models the cache cannot hold."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import MIXED, ONE, PROMPTS, TWO, WILD, reference_greedy, req

from lerpray.model import Engine, EngineError
from lerpray.model.cuda_graphs import batch_buckets
from lerpray.testing import tiny_tokenizer

pytestmark = pytest.mark.component

LONG = "a long prompt, " * 9  # 135 bytes: many chunks of 8


def run(engine: Engine, schedule: dict[int, list], steps: int = 400) -> tuple[dict[str, list[int]], list[list]]:
    """Drive the step API, adding schedule[step] before that step; returns token ids per request and the
    events of every step."""
    tokens: dict[str, list[int]] = {}
    history = []
    for step in range(steps):
        for r in schedule.get(step, []):
            engine.add(r)
            tokens[r.request_id] = []
        events = engine.step()
        history.append(events)
        for event in events:
            tokens[event.request_id].append(event.token_id)
        if not engine.has_work() and step >= max(schedule):
            break
    return tokens, history


def test_rows_of_very_different_lengths_reuse_slots_and_match_the_reference(imodel):
    """Two slots, six requests of 1 to 135 prompt tokens admitted at different steps: every finished slot is
    taken by the next request and every row decodes exactly like the one-row reference."""
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=2, prefill_chunk=8)
    schedule = {
        0: [req(LONG, MIXED, rid="long", max_tokens=5), req("q", WILD, rid="one", max_tokens=9)],
        1: [req(PROMPTS[1], TWO, rid="mid", max_tokens=4), req(PROMPTS[2], ONE, rid="short", max_tokens=7)],
        6: [req(PROMPTS[0], MIXED, rid="late", max_tokens=6), req(LONG[:40], TWO, rid="late2", max_tokens=3)],
    }
    tokens, _ = run(engine, schedule)
    storage = engine._cache.layers[0].keys.data_ptr()
    assert engine._cache.layers[0].keys.shape[0] == 3  # two slots, reused by six requests, and the scratch slot
    for requests in schedule.values():
        for r in requests:
            assert tokens[r.request_id] == reference_greedy(engine, r), r.request_id
    tokens, _ = run(engine, {0: [req(PROMPTS[1], WILD, rid="again", max_tokens=4)]})
    assert engine._cache.layers[0].keys.data_ptr() == storage  # written in place: the storage never moved


def test_long_prefill_does_not_stall_decoding_rows(imodel):
    """A 135-token prompt arrives while three rows decode: it is prefilled 8 tokens a step, and every step of
    its prefill still gives each decoding row its next token."""
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=4, prefill_chunk=8)
    short = [req(p, m, rid=f"s{i}", max_tokens=60) for i, (p, m) in enumerate(zip(PROMPTS, [ONE, TWO, WILD], strict=True))]
    tokens, history = run(engine, {0: short, 12: [req(LONG, MIXED, rid="long", max_tokens=4)]})
    assert {e.request_id for e in history[11]} == {"s0", "s1", "s2"}  # all decoding when the long one arrives
    first_long = next(i for i, events in enumerate(history) if any(e.request_id == "long" for e in events))
    assert first_long - 12 >= len(LONG) // 8  # the prompt really took many steps
    for events in history[12:first_long]:
        assert sorted(e.request_id for e in events) == ["s0", "s1", "s2"]  # one token each, every step
    assert tokens["long"] == reference_greedy(engine, req(LONG, MIXED, max_tokens=4))


def test_short_prompt_overtakes_a_long_prefill(imodel):
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=4, prefill_chunk=16)
    schedule = {0: [req("x", ONE, rid="bg", max_tokens=60)], 2: [req(LONG * 3, ONE, rid="long", max_tokens=2)],
                4: [req("hi", TWO, rid="short")]}
    _, history = run(engine, schedule)
    first = {}
    for i, events in enumerate(history):
        for e in events:
            first.setdefault(e.request_id, i)
    assert first["short"] == 4 and first["long"] > 12  # the short one's first token came in the step it arrived


def test_idle_engine_prefills_a_burst_in_one_step(imodel):
    """With no row decoding there is no stream to protect: arrivals are prefilled together, whatever the chunk."""
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=4, prefill_chunk=8)
    _, history = run(engine, {0: [req(LONG, ONE, rid="a", max_tokens=2), req(PROMPTS[1], TWO, rid="b", max_tokens=2)]})
    assert sorted(e.request_id for e in history[0]) == ["a", "b"]


def test_offline_steps_prefill_a_new_prompt_at_once_while_rows_decode(imodel):
    """generate()/stream() protect no stream: a prompt that arrives while a row decodes is prefilled in one step
    (step() would take it 8 tokens a step), so a batch whose rows finish one by one refills its slots at once."""
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=2, prefill_chunk=8)
    engine.add(req("x", ONE, rid="bg", max_tokens=6))
    engine.step()  # "bg" decodes from here on
    engine.add(req(LONG, ONE, rid="long", max_tokens=2))
    assert sorted(e.request_id for e in engine.step(protect_streams=False)) == ["bg", "long"]  # prefilled + token


def test_abort_mid_prefill_frees_the_slot_and_the_engine_keeps_serving(imodel):
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=2, prefill_chunk=8)
    engine.add(req("x", ONE, rid="bg", max_tokens=6))  # decoding, so prompts go 8 tokens a step
    engine.step()
    engine.add(req(LONG, ONE, rid="doomed"))
    engine.add(req(PROMPTS[0], TWO, rid="next", max_tokens=5))
    for _ in range(2):  # prefilling "doomed" 8 tokens a step; "next" waits for a slot
        assert [e.request_id for e in engine.step()] == ["bg"]
    assert engine.abort("doomed") and not engine.abort("doomed")
    tokens: dict[str, list[int]] = {}
    while engine.has_work():
        for event in engine.step():
            tokens.setdefault(event.request_id, []).append(event.token_id)
    assert set(tokens) == {"bg", "next"}
    assert tokens["next"] == reference_greedy(engine, req(PROMPTS[0], TWO, max_tokens=5))


def test_siblings_share_one_shrink_and_stay_exact(imodel):
    """q, k and v read one input: one stacked A serves all three (their own A are views of it)."""
    attention = "model.layers.0.self_attn"
    q, k, v, o = (imodel.layers[f"{attention}.{n}"] for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert q.group is k.group is v.group is not None and o.group is None
    assert q.A_cat.data_ptr() == q.group.A_cat.data_ptr()
    assert q.group.A_cat.shape[0] == q.A_cat.shape[0] + k.A_cat.shape[0] + v.A_cat.shape[0]


def test_cache_is_allocated_once_at_start_up_and_a_long_context_fits_without_growing(imodel):
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=2, prefill_chunk=64)
    storage, capacity = engine._cache.layers[0].keys.data_ptr(), engine._cache.capacity
    assert capacity == engine.context_length == 512  # the tiny Llama's context: the default budget fits it
    prompt = "x" * 400
    assert engine.generate([req(prompt, ONE, max_tokens=3)])[0].completion_tokens == 3
    assert engine.generate([req(PROMPTS[0], ONE, max_tokens=4)])[0].completion_tokens == 4
    assert (engine._cache.layers[0].keys.data_ptr(), engine._cache.capacity) == (storage, capacity)


def test_sliding_window_models_are_refused(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    from lerpray.model import interpolate
    from lerpray.testing import anchor_set_from_adapters, random_adapter

    config = MistralConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16)
    base = MistralForCausalLM(config).eval()
    adapters = {name: random_adapter(base, tmp_path / name, seed=i)
                for i, name in enumerate(["tone.positive", "tone.negative"])}
    imodel = interpolate(base, anchor_set_from_adapters(base, adapters))
    with pytest.raises(EngineError, match="sliding"):
        Engine(imodel, tiny_tokenizer())


def test_batch_buckets_cover_every_size_with_little_padding():
    buckets = batch_buckets(64)
    assert buckets[0] == 1 and buckets[-1] == 64
    for n in range(1, 65):
        assert next(b for b in buckets if b >= n) - n < 8
    assert batch_buckets(3) == [1, 2, 3]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_decode_matches_eager_and_never_recaptures_for_a_new_mix(imodel, monkeypatch):
    """Rows of different mixes decode through captured graphs (not the eager path) exactly like the eager engine;
    a batch of new mixes replays the same graphs with the new coefficients and captures nothing."""
    import copy

    cuda = copy.deepcopy(imodel)
    cuda.model.to("cuda")
    graphs = Engine(cuda, tiny_tokenizer(), max_batch_size=4, cuda_graphs=True)
    eager = Engine(cuda, tiny_tokenizer(), max_batch_size=4, cuda_graphs=False)
    replays = []
    replay = graphs._graphs.run
    monkeypatch.setattr(graphs._graphs, "run", lambda *args: replays.append(len(args[0])) or replay(*args))
    first = [req(p, m, max_tokens=8) for p, m in zip(PROMPTS, [ONE, TWO, WILD], strict=True)]
    assert [r.text for r in graphs.generate(first)] == [r.text for r in eager.generate(first)]
    captures = graphs._graphs.captures
    assert captures >= 1 and replays, f"no CUDA graph captured or replayed ({captures} captures): it decoded eagerly"
    replays.clear()
    second = [req(p, m, max_tokens=8) for p, m in zip(PROMPTS, [MIXED, WILD, (0.3, 0.3, 0.3, 0.1)], strict=True)]
    assert [r.text for r in graphs.generate(second)] == [r.text for r in eager.generate(second)]
    assert replays and graphs._graphs.captures == captures  # the new mixes went through the same graphs

"""The host's work beside the device's: text detokenised while the next forward runs (emission.py), one device
sync per step, and the graphs' pinned active-anchor buffers (cuda_graphs.py), all proven on the CPU."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import MIXED, ONE, PROMPTS, TWO, WILD, printable_only, reference_greedy, req

from lerpray.model import Engine, GenerationRequest, SamplingParams
from lerpray.model.mix_state import STATIC
from lerpray.model.rows import Row, choose_tokens
from lerpray.model.sampling import TextStream
from lerpray.testing import tiny_tokenizer

pytestmark = pytest.mark.component


def replies(engine: Engine, requests) -> dict:
    """(request, choice) -> (token ids, text, finish, completion tokens, chosen log-probs, top alternatives)."""
    out: dict = {}
    for e in engine.stream(requests):
        tokens, text, _, _, logprobs, tops = out.get((e.request_id, e.index), ([], "", None, 0, [], []))
        out[e.request_id, e.index] = (tokens + [e.token_id], text + e.text, e.finish_reason, e.completion_tokens,
                                      logprobs + [e.logprob], tops + [e.top_logprobs])
    return out


def mixed_requests(stop: str) -> list:
    sampled = GenerationRequest(coeffs=MIXED, prompt=PROMPTS[1], request_id="sampled", n=2,
                                sampling=SamplingParams(temperature=0.9, seed=7, max_tokens=12))
    return [req(PROMPTS[0], ONE, rid="greedy", max_tokens=10, logprobs=2), sampled,
            req(PROMPTS[2], TWO, rid="stopped", max_tokens=16, stop=[stop]),
            req("abc", WILD, rid="short", max_tokens=2, frequency_penalty=1.0)]


def test_overlapped_text_gives_every_choice_the_same_reply(imodel):
    """Deferring each row's text to after the next forward changes nothing a client sees: tokens, text, finish
    reasons, counts and log-probs; a stop string found one forward late still cuts the reply at the same token."""
    plain = Engine(imodel, tiny_tokenizer(), max_batch_size=8)
    text = plain.generate([req(PROMPTS[2], TWO, max_tokens=16)])[0].text
    stop = text[4:6]  # ends the "stopped" request mid-reply
    expected = replies(plain, mixed_requests(stop))
    assert expected["stopped", 0][2] == "stop" and expected["stopped", 0][3] < 16
    overlapped = Engine(imodel, tiny_tokenizer(), max_batch_size=8, overlap_text=True)
    got = replies(overlapped, mixed_requests(stop))
    assert got.keys() == expected.keys()
    for key, (tokens, text, finish, count, logprobs, tops) in expected.items():
        assert got[key][:4] == (tokens, text, finish, count), key
        assert got[key][4] == pytest.approx(logprobs, abs=1e-5) if logprobs[0] is not None else got[key][4] == logprobs
        assert [[i for i, _ in top or []] for top in got[key][5]] == [[i for i, _ in top or []] for top in tops]
    assert not overlapped.has_work() and not overlapped._emission.deferred


def test_the_text_of_step_t_is_made_after_the_forward_of_step_t_plus_1_is_launched(imodel, monkeypatch):
    order: list[str] = []
    push = TextStream.push
    monkeypatch.setattr(TextStream, "push", lambda self, token, *stop: (order.append("text"), push(self, token, *stop))[1])
    bind = imodel.bind_coeffs
    monkeypatch.setattr(imodel, "bind_coeffs", lambda c, host=None: (order.append("forward"), bind(c, host))[1])
    for overlap, expected in ((False, ["forward", "text"] * 4), (True, ["forward", "forward"] + ["text", "forward"] * 2
                                                                    + ["text", "text"])):
        engine = Engine(imodel, tiny_tokenizer(), overlap_text=overlap)
        order.clear()
        engine.generate([req(PROMPTS[0], max_tokens=4, ignore_eos=True)])
        assert order == expected, overlap


def test_an_aborted_row_with_text_pending_sends_nothing_more(imodel):
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=4, overlap_text=True)
    engine.add(req(PROMPTS[0], ONE, rid="kept", max_tokens=8, ignore_eos=True))
    engine.add(req(PROMPTS[1], TWO, rid="gone", max_tokens=8, ignore_eos=True))
    seen = [e.request_id for _ in range(3) for e in engine.step()]
    assert "gone" in [r.request.request_id for r in engine._emission.deferred]
    assert engine.abort("gone")
    while engine.has_work():
        seen += [e.request_id for e in engine.step()]
    assert seen.count("kept") == 8 and seen.count("gone") < 8 and seen[-1] == "kept"


def test_one_device_to_host_copy_per_step(imodel, monkeypatch):
    """choose_tokens brings ids, chosen log-probs and alternatives to the host in one copy (one sync on CUDA), and
    the forwards find their active anchors in the host's coefficient rows (none on CUDA)."""
    rows = [Row.choices(r, [5, 6], tiny_tokenizer())[0] for r in (
        req(PROMPTS[0], ONE, logprobs=3), req(PROMPTS[1], TWO, logprobs=0, temperature=1.0, seed=1),
        req(PROMPTS[2], TWO, temperature=0.5, top_k=3))]
    calls = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: (calls.append(self.shape), tolist(self))[1])
    logits = torch.randn(3, 300)
    tokens, chosen, tops = choose_tokens(logits, rows)
    assert calls == [torch.Size([3 + 2 + 2 * 3 * 2])]  # 3 ids, 2 chosen, 2 rows x top 3 (values and ids)
    logprobs = torch.log_softmax(logits, dim=-1)
    assert tokens[0] == int(logits[0].argmax()) and chosen[2] is None and tops[1] is None
    assert chosen[:2] == pytest.approx([float(logprobs[i, tokens[i]]) for i in range(2)])
    values, ids = logprobs[0].topk(3)
    assert [t for t, _ in tops[0]] == ids.tolist() and [v for _, v in tops[0]] == pytest.approx(values.tolist())


def test_the_active_anchors_are_read_from_the_host_rows(imodel):
    state = imodel._state
    device_rows, host_rows = torch.tensor([[1.0, 1.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    state.set(device_rows, host_rows)  # on CUDA these are one mix in two places; here they differ to tell them apart
    state.new_forward()
    assert state.anchors == (0,)
    state.set(device_rows)
    state.new_forward()
    assert state.anchors == (0, 1)


@pytest.fixture
def fresh_imodel(tiny_anchor_set, base_dir):
    """Pinning changes a model for good: a model of its own."""
    engine = Engine.from_uri(tiny_anchor_set, base_model=base_dir)
    engine.model.lm_head.register_forward_hook(printable_only)
    return engine.imodel


def test_graph_steps_run_over_pinned_buffers_of_the_active_anchors_only(fresh_imodel, monkeypatch):
    """With capacity 2 of the 4 anchors, a bucket step whose rows use 2 anchors runs the graphs' function over
    the pinned buffers, refilled from the host's coefficient rows; 3 or more run the wide graphs' function over
    every anchor's columns; both give every row its reference tokens."""
    statics = []
    use = fresh_imodel._state.use
    monkeypatch.setattr(fresh_imodel._state, "use", lambda anchors: (statics.append(anchors == STATIC), use(anchors))[1])
    engine = Engine(fresh_imodel, tiny_tokenizer(), max_batch_size=4, decode_mode="bucket", active_capacity=2)
    assert engine._graphs.pinned and fresh_imodel._state.capacity == 2
    two = [req(PROMPTS[0], ONE, rid="one", max_tokens=8), req(PROMPTS[1], TWO, rid="two", max_tokens=8)]
    by_id: dict[str, list[int]] = {}
    for e in engine.stream(two):
        by_id.setdefault(e.request_id, []).append(e.token_id)
    assert engine._graphs.wide_steps == 0 and any(statics)
    reference = Engine(fresh_imodel, tiny_tokenizer(), max_batch_size=1)
    for r in two:
        assert by_id[r.request_id] == reference_greedy(reference, r), r.request_id
    many = [req(PROMPTS[2], MIXED, rid="mixed", max_tokens=6), req(PROMPTS[0], TWO, rid="two", max_tokens=6)]
    results = engine.generate(many)
    assert engine._graphs.wide_steps > 0
    for r, result in zip(many, results, strict=True):
        assert engine.tokenizer.encode(result.text, add_special_tokens=False) == reference_greedy(reference, r)


def test_the_pinned_buffers_must_be_refilled_before_a_replay(fresh_imodel, monkeypatch):
    """The test above can fail: replays whose pinned buffers are not refilled run without the anchors' updates."""
    engine = Engine(fresh_imodel, tiny_tokenizer(), max_batch_size=4, decode_mode="bucket", active_capacity=2)
    request = req(PROMPTS[0], ONE, max_tokens=8)
    expected = reference_greedy(Engine(fresh_imodel, tiny_tokenizer(), max_batch_size=1), request)
    monkeypatch.setattr(fresh_imodel, "prepare_active", lambda coeffs: True)
    got = engine.tokenizer.encode(engine.generate([request])[0].text, add_special_tokens=False)
    assert got != expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_pinned_to_two_anchors_match_eager_decode(fresh_imodel):
    """On a GPU: pinned and wide graphs replay (captured twice per bucket), overlapped text, and the eager engine
    agree token for token."""
    fresh_imodel.model.to("cuda")
    graphs = Engine(fresh_imodel, tiny_tokenizer(), max_batch_size=4, decode_mode="graph", active_capacity=2)
    assert graphs._graphs.captures == 2 * len(graphs._graphs.buckets) * len(graphs._graphs.lengths)
    eager = Engine(fresh_imodel, tiny_tokenizer(), max_batch_size=4, decode_mode="eager")
    assert graphs._emission.overlap and eager._emission.overlap
    for mixes in ([ONE, TWO, ONE], [MIXED, WILD, TWO]):
        batch = [req(p, m, max_tokens=8) for p, m in zip(PROMPTS, mixes, strict=True)]
        assert [r.text for r in graphs.generate(batch)] == [r.text for r in eager.generate(batch)]
    assert graphs._graphs.wide_steps > 0

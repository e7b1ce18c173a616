"""What the engine's step offers the API on top of plain generation, each against a one-row HF reference loop:
n choices from one prefill, log probabilities (generated and prompt tokens), presence/frequency penalties,
logit bias, and mixes scheduled per generated token."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import MIXED, ONE, PROMPTS, TWO, WILD, reference_greedy, req, token_ids

from lerpray.model import Engine, EngineError, GenerationRequest, ResolvedMix, SamplingParams
from lerpray.testing import tiny_tokenizer

pytestmark = pytest.mark.component


def events_of(engine: Engine, requests: list[GenerationRequest]) -> dict[tuple[str, int], list]:
    out: dict[tuple[str, int], list] = {}
    for event in engine.stream(requests):
        out.setdefault((event.request_id, event.index), []).append(event)
    return out


def test_n_choices_share_one_prefill_and_each_equals_its_own_seeded_request(engine, spy):
    params = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 10}
    three = GenerationRequest(coeffs=MIXED, prompt=PROMPTS[1], n=3, request_id="three",
                              sampling=SamplingParams(seed=40, **params))
    got = events_of(engine, [three])
    assert spy["shapes"][0] == (1, 4)  # one prefill row for three choices
    texts = ["".join(e.text for e in got[("three", i)]) for i in range(3)]
    assert len(set(texts)) == 3  # different seeds, different samples
    for i in range(3):
        alone = engine.generate([req(PROMPTS[1], MIXED, seed=40 + i, **params)])[0]
        assert texts[i] == alone.text, i


def test_n_choices_need_free_slots_and_are_bounded(imodel):
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=2)
    with pytest.raises(EngineError, match="n must be between 1 and 2"):
        engine.add(GenerationRequest(coeffs=ONE, prompt="hi", n=3))
    results = engine.generate([req("a", ONE, rid="x", max_tokens=3), GenerationRequest(
        coeffs=TWO, prompt="b", n=2, request_id="y", sampling=SamplingParams(temperature=0, max_tokens=2))])
    assert [(r.request_id, r.index, r.completion_tokens) for r in results] == [("x", 0, 3), ("y", 0, 2), ("y", 1, 2)]
    assert results[1].text == results[2].text  # greedy choices agree


def test_logprobs_are_the_mix_models_log_softmax(engine):
    request = req(PROMPTS[0], WILD, logprobs=3, max_tokens=6)
    reference: list[torch.Tensor] = []
    tokens = reference_greedy(engine, request, logprobs=reference)
    events = events_of(engine, [request])[(request.request_id, 0)]
    assert [e.token_id for e in events] == tokens
    for event, lp in zip(events, reference, strict=True):
        assert event.logprob == pytest.approx(float(lp[event.token_id]), abs=1e-4)
        top_ids = [t for t, _ in event.top_logprobs]
        assert top_ids == lp.topk(3).indices.tolist() and top_ids[0] == event.token_id  # greedy takes the top one
        assert [v for _, v in event.top_logprobs] == pytest.approx(lp.topk(3).values.tolist(), abs=1e-4)


@pytest.mark.parametrize("chunk", [8, 512])
def test_prompt_logprobs_score_the_prompt_across_chunks(imodel, chunk):
    engine = Engine(imodel, tiny_tokenizer(), prefill_chunk=chunk)
    request = req(PROMPTS[1], TWO, max_tokens=0, prompt_logprobs=2)
    [event] = events_of(engine, [request])[(request.request_id, 0)]
    assert (event.token_id, event.finish_reason, event.completion_tokens) == (-1, "length", 0)
    ids = engine.encode(request)
    imodel.set_coeffs(torch.tensor([TWO]))
    with torch.no_grad():
        lp = torch.log_softmax(imodel(torch.tensor([ids])).logits[0].float(), dim=-1)  # [P, V]
    assert [t for t, _, _ in event.prompt_logprobs] == ids
    assert event.prompt_logprobs[0][1] is None
    want = lp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    got = torch.tensor([v for _, v, _ in event.prompt_logprobs[1:]])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert [len(alts) for _, _, alts in event.prompt_logprobs[1:]] == [2] * (len(ids) - 1)
    assert not engine.has_work()


def test_penalties_and_bias_reshape_only_their_own_row(engine):
    penalised = req(PROMPTS[0], ONE, rid="pen", frequency_penalty=1.5, presence_penalty=0.5, max_tokens=12)
    plain = req(PROMPTS[2], TWO, rid="plain")

    def penalty(z, tokens):
        for t in set(tokens):
            z[t] -= 1.5 * tokens.count(t) + 0.5

    got = token_ids(engine, [penalised, plain])
    assert got["pen"] == reference_greedy(engine, penalised, reshape=penalty)
    assert got["plain"] == reference_greedy(engine, plain)
    assert got["pen"] != reference_greedy(engine, req(PROMPTS[0], ONE, max_tokens=12))  # the penalty mattered
    biased = token_ids(engine, [req(PROMPTS[0], ONE, rid="b", logit_bias={70: 100.0}, max_tokens=5)])
    assert biased["b"] == [70] * 5


def test_scheduled_mix_equals_switching_the_mix_at_that_token(engine, spy):
    pieces = ResolvedMix(pieces=((4, ONE), (9, WILD), (None, TWO)))
    ramp = ResolvedMix(ramp=(ONE, TWO, 6))
    requests = [GenerationRequest(mix=pieces, prompt=PROMPTS[0], request_id="pieces",
                                  sampling=SamplingParams(temperature=0, max_tokens=12)),
                GenerationRequest(mix=ramp, prompt=PROMPTS[1], request_id="ramp",
                                  sampling=SamplingParams(temperature=0, max_tokens=10)),
                req(PROMPTS[2], MIXED, rid="steady")]
    forwards = len(spy["shapes"])
    got = token_ids(engine, requests)
    assert len(spy["shapes"]) - forwards <= 2 + 12  # no extra forward pass for a change of mix
    for r in requests:
        assert got[r.request_id] == reference_greedy(engine, r), r.request_id
    assert got["pieces"] != reference_greedy(engine, req(PROMPTS[0], ONE))  # the schedule changed the text
    assert ramp.at(3) == pytest.approx(tuple(0.5 * (a + b) for a, b in zip(ONE, TWO, strict=True)))


def test_sampling_params_refuse_out_of_range_extras():
    from lerpray.model.sampling import SamplingError

    for bad in ({"presence_penalty": 2.5}, {"logprobs": 21}, {"logit_bias": {5: 200}}, {"max_tokens": 0}):
        with pytest.raises(SamplingError):
            SamplingParams(**bad)
    assert SamplingParams(max_tokens=0, prompt_logprobs=0).max_tokens == 0
    assert SamplingParams(seed=7).for_choice(2).seed == 9 and SamplingParams().for_choice(2).seed is None


def test_a_finished_rows_slot_drops_its_mix_so_its_anchors_leave_the_active_set(engine, imodel, monkeypatch):
    bound = []
    bind_coeffs = imodel.bind_coeffs
    monkeypatch.setattr(imodel, "bind_coeffs", lambda c, host=None: (bound.append(c.clone()), bind_coeffs(c, host))[1])
    # slot 0 ends after 2 tokens; slot 1 decodes on, with the idle slot 0 as a padding row below it
    engine.generate([req(PROMPTS[0], ONE, max_tokens=2, ignore_eos=True), req(PROMPTS[1], TWO, max_tokens=8, ignore_eos=True)])
    late = bound[-3:]  # the last decode steps: rows [0, 2), slot 0 long finished
    assert all(c.shape[0] == 2 and not c[0].any() and c[1].tolist() == list(TWO) for c in late)
    engine.step()  # the next step clears what the last one freed
    assert not engine._mixes.host.any()

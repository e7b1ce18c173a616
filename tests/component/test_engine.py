"""The batching engine on a tiny Llama: batched, continuously-admitted generation equals an unpadded
one-row-at-a-time reference loop; per-row sampling, stop strings, streaming and chat prompts."""

from __future__ import annotations

import pytest
from engine_helpers import MIXED, ONE, PROMPTS, TWO, WILD, reference_greedy, req, token_ids

from lerpray.model import Engine, EngineError, GenerationRequest, PromptTooLongError, SamplingParams
from lerpray.testing import tiny_tokenizer

pytestmark = pytest.mark.component

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_batched_greedy_equals_unpadded_reference(engine, spy):
    requests = [req(p, c) for p, c in zip(PROMPTS, [ONE, TWO, WILD], strict=True)]
    got = token_ids(engine, requests)
    assert spy["shapes"][0] == (3, 4)  # one forward for all rows, a coefficient row each
    for r in requests:
        assert got[r.request_id] == reference_greedy(engine, r)


def test_rows_joining_mid_way_match_reference(engine):
    """Continuous batching: requests added between steps merge into the running batch (longer and shorter
    prompts, so both caches get left-padded) and still decode exactly like the reference."""
    first = [req(PROMPTS[0], rid="a", max_tokens=10), req(PROMPTS[2], TWO, rid="b", max_tokens=4)]
    late = [req(PROMPTS[1], MIXED, rid="c", max_tokens=8), req("q", WILD, rid="d", max_tokens=6)]
    for r in first:
        engine.add(r)
    tokens: dict[str, list[int]] = {r.request_id: [] for r in first + late}
    batch_sizes = []
    for step in range(40):
        if step == 2:
            engine.add(late[0])
        if step == 5:
            engine.add(late[1])
        events = engine.step()
        batch_sizes.append(len(events))
        for event in events:
            tokens[event.request_id].append(event.token_id)
        if not engine.has_work():
            break
    assert max(batch_sizes) >= 3  # rows really shared steps
    for r in first + late:
        assert tokens[r.request_id] == reference_greedy(engine, r), r.request_id


def test_batch_invariance_of_greedy_rows(engine):
    alone = engine.generate([req(PROMPTS[0], MIXED)])[0]
    crowd = engine.generate([req(p, c) for p, c in zip(PROMPTS[::-1], [TWO, WILD, MIXED], strict=True)])
    assert crowd[2].text == alone.text


def test_max_batch_size_bounds_rows_per_step(imodel, spy):
    engine = Engine(imodel, tiny_tokenizer(), max_batch_size=2)
    for i in range(5):
        engine.add(req(PROMPTS[i % 3], rid=str(i), max_tokens=3))
    events = 0
    while engine.has_work():
        events += len(engine.step())
    assert max(n for n, _ in spy["shapes"]) == 2  # rows per forward pass
    assert events == 15


def test_different_mixes_differ_and_identical_mixes_agree(engine):
    sampling = {"temperature": 1.0, "seed": 2, "max_tokens": 16}
    mixes = [ONE, TWO, ONE, WILD, MIXED]
    results = engine.generate([req("Same prompt", mix, **sampling) for mix in mixes])
    assert results[0].text == results[2].text
    assert len({results[i].text for i in (0, 1, 3, 4)}) == 4


def test_seeded_sampling_is_deterministic_and_batch_invariant(engine):
    params = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 16}
    alone = engine.generate([req(PROMPTS[0], seed=7, **params)])[0]
    crowd = engine.generate([req(PROMPTS[1], seed=1, **params), req(PROMPTS[0], seed=7, **params), req("x", **params)])
    other = engine.generate([req(PROMPTS[0], seed=8, **params)])[0]
    assert crowd[1].text == alone.text
    assert other.text != alone.text


def test_top_k_one_is_greedy(engine):
    greedy = engine.generate([req(PROMPTS[1])])[0]
    top1 = engine.generate([req(PROMPTS[1], temperature=1.5, top_k=1)])[0]
    assert top1.text == greedy.text


def test_max_tokens_gives_length(engine):
    result = engine.generate([req(PROMPTS[0], max_tokens=5)])[0]
    assert (result.completion_tokens, result.finish_reason) == (5, "length")
    assert result.prompt_tokens == len(engine.encode(req(PROMPTS[0])))


def test_stop_string_cuts_text_and_finishes(engine):
    sampling = {"max_tokens": 12, "temperature": 1.0, "seed": 5}
    full = engine.generate([req(PROMPTS[0], **sampling)])[0]
    assert len(full.text) == 12, "the fake model only generates printable ASCII"
    stop = full.text[6:8]
    cut = engine.generate([req(PROMPTS[0], stop=(stop, "never-seen"), **sampling)])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.completion_tokens < full.completion_tokens


def test_eos_finishes_with_stop(imodel):
    engine = Engine(imodel, tiny_tokenizer())
    sampling = {"temperature": 1.0, "seed": 3, "max_tokens": 12}
    tokens = token_ids(engine, [req(PROMPTS[1], rid="r", **sampling)])["r"]
    first_new = next(i for i, t in enumerate(tokens) if t not in tokens[:i] and i > 0)
    engine._emission.eos = frozenset([tokens[first_new]])  # pretend that token is EOS; same seed, same tokens before it
    result = engine.generate([req(PROMPTS[1], **sampling)])[0]
    assert (result.finish_reason, result.completion_tokens) == ("stop", first_new + 1)
    assert result.text == engine.tokenizer.decode(tokens[:first_new])


def test_min_tokens_holds_eos_and_stop_strings_back_until_that_many_tokens(imodel):
    engine = Engine(imodel, tiny_tokenizer())
    sampling = {"temperature": 1.0, "seed": 3, "max_tokens": 16}
    tokens = token_ids(engine, [req(PROMPTS[1], rid="r", **sampling)])["r"]
    first_new = next(i for i, t in enumerate(tokens) if t not in tokens[:i] and i > 0)
    eos = tokens[first_new]
    engine._emission.eos = frozenset([eos])
    held = engine.generate([req(PROMPTS[1], min_tokens=first_new + 3, **sampling)])[0]
    ids = engine.encode(req(PROMPTS[1]))
    assert held.completion_tokens >= first_new + 3  # EOS could not be sampled before min_tokens
    assert eos not in engine.tokenizer(held.text, add_special_tokens=False)["input_ids"][: first_new + 3]
    assert held.prompt_tokens == len(ids)
    plain = engine.generate([req(PROMPTS[1], **sampling)])[0]
    assert plain.completion_tokens == first_new + 1  # without it the same seed ends at the EOS

    engine._emission.eos = frozenset()
    full = engine.generate([req(PROMPTS[0], **{**sampling, "max_tokens": 12})])[0]
    stop = full.text[2:4]
    early = engine.generate([req(PROMPTS[0], stop=(stop,), **{**sampling, "max_tokens": 12})])[0]
    late = engine.generate([req(PROMPTS[0], stop=(stop,), min_tokens=8, **{**sampling, "max_tokens": 12})])[0]
    assert early.completion_tokens < 8 and early.finish_reason == "stop"
    assert late.completion_tokens >= 8 and late.text.startswith(full.text[:4])  # the early stop string is text
    cut = full.text.find(stop, 6)  # a stop string completed at token 8 or later still ends the row
    assert late.text == (full.text if cut < 0 else full.text[:cut])
    edge = full.text[6:8]  # begins before min_tokens, completes at token 8: it ends the row (vLLM's rule)
    straddle = engine.generate([req(PROMPTS[0], stop=(edge,), min_tokens=8, **{**sampling, "max_tokens": 12})])[0]
    assert (straddle.text, straddle.finish_reason) == (full.text[:6], "stop")


def test_min_tokens_must_fit_in_max_tokens():
    from lerpray.configs import SamplingSettings
    from lerpray.model.sampling import SamplingError

    with pytest.raises(SamplingError, match="min_tokens must be in"):
        SamplingParams(max_tokens=4, min_tokens=5)
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingSettings(max_tokens=4, min_tokens=5)
    assert SamplingSettings(max_tokens=4, min_tokens=4).engine_kwargs()["min_tokens"] == 4


def test_stream_concatenates_to_generate(engine):
    requests = [req(p, max_tokens=20, temperature=1.0, seed=s, stop=("zz",)) for s, p in enumerate(PROMPTS)]
    texts: dict[str, str] = {r.request_id: "" for r in requests}
    for event in engine.stream(requests):
        texts[event.request_id] += event.text
    again = engine.generate([req(p, max_tokens=20, temperature=1.0, seed=s, stop=("zz",)) for s, p in enumerate(PROMPTS)])
    assert [texts[r.request_id] for r in requests] == [r.text for r in again]
    assert all(len(t) > 0 for t in texts.values())


def test_chat_messages_use_the_template(engine):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(EngineError, match="chat template"):
        engine.generate([GenerationRequest(coeffs=ONE, messages=messages)])
    engine.tokenizer.chat_template = CHAT_TEMPLATE
    chat = GenerationRequest(coeffs=ONE, messages=messages, sampling=SamplingParams(temperature=0, max_tokens=12))
    raw = req("<user>hi\n<assistant>")
    assert engine.encode(chat) == engine.encode(raw)
    assert engine.generate([chat])[0].text == engine.generate([raw])[0].text


def test_prompt_too_long_names_the_lengths(imodel):
    engine = Engine(imodel, tiny_tokenizer(), context_length=32)
    with pytest.raises(PromptTooLongError, match="40 tokens but at most 22") as err:
        engine.generate([req("x" * 40, max_tokens=10)])
    assert isinstance(err.value, ValueError)
    assert not engine.has_work()


def test_bad_requests_are_refused(engine):
    with pytest.raises(EngineError, match="4 anchors"):
        engine.add(req("hi", coeffs=(1.0, 0.0)))
    with pytest.raises(EngineError, match="exactly one"):
        engine.add(GenerationRequest(coeffs=ONE))
    engine.add(req("hi", rid="dup"))
    with pytest.raises(EngineError, match="already"):
        engine.add(req("hi", rid="dup"))
    assert engine.abort("dup") and not engine.has_work()


def test_merged_fast_path_only_when_all_rows_share_a_mix(imodel, spy):
    fast = Engine(imodel, tiny_tokenizer(), merged_fast_path=True, prefill_chunk=256)  # each prompt in one step
    shared = [req(PROMPTS[0], MIXED, max_tokens=6), req(PROMPTS[1], MIXED, max_tokens=6)]
    assert token_ids(fast, shared) == token_ids(Engine(imodel, tiny_tokenizer()), shared)
    assert spy["merged"] == 6  # one prefill + five decode steps, all one mix
    fast.generate([req(PROMPTS[0], ONE, max_tokens=3), req(PROMPTS[1], TWO, max_tokens=3)])
    assert spy["merged"] == 6


def test_abandoned_stream_leaves_engine_idle(engine):
    events = engine.stream([req(p, max_tokens=10) for p in PROMPTS])
    next(events)
    events.close()
    assert not engine.has_work()


def test_cli_generate_streams_what_the_engine_generates(tiny_anchor_set, base_dir, capsys):
    from lerpray.cli import main
    from lerpray.mixing import resolve_mix

    mix = '{"alpha": {"sentiment": 0.9, "formality": 0.2}}'
    argv = ["generate", "--anchors", tiny_anchor_set, "--base", base_dir, "--mix", mix, "--temperature", "0.8",
            "--seed", "4", "--max-tokens", "10", "Hello there"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    engine = Engine.from_uri(tiny_anchor_set, base_model=base_dir)
    coeffs = resolve_mix({"alpha": {"sentiment": 0.9, "formality": 0.2}}, engine.layout, None)
    expected = engine.generate([req("Hello there", coeffs, temperature=0.8, seed=4, max_tokens=10)])[0]
    assert printed == expected.text + "\n"


@pytest.mark.parametrize(
    ("mix", "flags", "message"),
    [
        ("{oops", [], "--mix: is not valid JSON"),
        ('{"alpha": {"sentiment": 1.5}, "extrapolate": true}', [], "extrapolat"),
        ('{"alpha": {"sentiment": 0.5}}', ["--chat"], "no chat template"),
    ],
)
def test_cli_generate_reports_bad_input(tiny_anchor_set, base_dir, capsys, mix, flags, message):
    from lerpray.cli import main

    argv = ["generate", "--anchors", tiny_anchor_set, "--base", base_dir, "--mix", mix, *flags, "hi"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_allow_extrapolation_accepts_a_wide_alpha(tiny_anchor_set, base_dir):
    from lerpray.cli import main

    mix = '{"alpha": {"sentiment": 1.5}, "extrapolate": true}'
    argv = ["generate", "--anchors", tiny_anchor_set, "--base", base_dir, "--mix", mix, "--allow-extrapolation",
            "--max-tokens", "2", "hi"]
    assert main(argv) == 0


def test_cli_generate_runs_a_feedback_mix_closed_loop(tiny_anchor_set, base_dir, tmp_path, capsys):
    """A target with feedback gets the server's steer hook: the reported trajectory moves the alpha, and its mixes
    replay the printed text in a plain engine (open loop would print the start mix's text and report nothing)."""
    import json
    import shutil

    from lerpray.anchors import open_store
    from lerpray.anchors.calibration import save_calibration
    from lerpray.cli import main
    from lerpray.mixing import resolve_mix
    from lerpray.model import ResolvedMix

    calibrated = tmp_path / "set"
    shutil.copytree(tiny_anchor_set, calibrated)
    curve = {"scorer": "vader", "alphas": [0, 1], "fit": [-0.5, 0.5]}  # score = alpha - 0.5
    doc = {"curves": {"sentiment": curve}, "scorers": {"sentiment": {"spec": "vader"}}}
    save_calibration(open_store(calibrated), doc)
    mix = '{"target": {"sentiment": 0.3}, "feedback": {"every": 2, "gain": 1.0}}'
    argv = ["generate", "--anchors", str(calibrated), "--base", base_dir, "--mix", mix, "--temperature", "0",
            "--max-tokens", "8", "Hello there"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr()
    report = json.loads(out.err.split("resolved_mix.feedback: ", 1)[1])
    steps = report["trajectory"]
    assert [s["token"] for s in steps] == [0, 2, 4, 6] and steps[0]["alpha"] == {"sentiment": pytest.approx(0.8)}
    assert any(s["alpha"]["sentiment"] != pytest.approx(0.8) for s in steps[1:])  # the loop moved the mix
    engine = Engine.from_uri(str(calibrated), base_model=base_dir)
    mixes = [resolve_mix({"alpha": s["alpha"]}, engine.layout) for s in steps]
    pieces = [(nxt["token"], m) for m, nxt in zip(mixes[:-1], steps[1:], strict=True)] + [(None, mixes[-1])]
    replay = GenerationRequest(mix=ResolvedMix(pieces=tuple(pieces)), prompt="Hello there",
                               sampling=SamplingParams(temperature=0, max_tokens=8))  # fmt: skip
    assert out.out == engine.generate([replay])[0].text + "\n"


def test_gpt2_learned_positions_match_reference(tmp_path):
    """GPT-2: Conv1D projections and learned absolute positions, so per-row position ids must be right."""
    import copy

    from lerpray.model import interpolate
    from lerpray.testing import anchor_set_from_adapters, random_adapter, tiny_gpt2

    base = tiny_gpt2(seed=0)
    folders = {name: random_adapter(base, tmp_path / name, target_modules=("c_attn", "c_proj"), seed=i)
               for i, name in enumerate(["tone.positive", "tone.negative"])}
    engine = Engine(interpolate(copy.deepcopy(base), anchor_set_from_adapters(base, folders)), tiny_tokenizer())
    requests = [req(p, c, max_tokens=8) for p, c in zip(PROMPTS, [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)], strict=True)]
    got = token_ids(engine, requests)
    for r in requests:
        assert got[r.request_id] == reference_greedy(engine, r)

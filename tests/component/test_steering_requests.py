"""Steering through the serve layer on the tiny model: a schedule sent the HTTP way (a parsed request body) runs
exactly as the engine's ResolvedMix (token for token vs the switching reference loop), targets resolve through a
calibration file beside the set (read once, when the set loads), calibration files for another set version, or
tampered with, are refused, and a request's mix is resolved exactly once, by lerpray.steering.resolve."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from engine_helpers import PROMPTS, reference_greedy, token_ids

from lerpray.anchors import MANIFEST_NAME, open_store
from lerpray.anchors.calibration import (
    CALIBRATION_NAME,
    CalibrationError,
    load_calibration,
    read_calibration,
    save_calibration,
)
from lerpray.mixing import MixError
from lerpray.model import ResolvedMix
from lerpray.serve.config import ServeArgs
from lerpray.serve.protocol import generation_request, mix_context
from lerpray.serve.schemas import CompletionRequest

pytestmark = pytest.mark.component

S, F = "sentiment", "formality"
POS, NEG, FORMAL, INFORMAL = (1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0)
# A synthetic calibration: sentiment's score = alpha - 0.5 on [-1, 2]; formality's = 2 * alpha on [0, 1]
CURVES = {"curves": {S: {"scorer": "vader", "alphas": [-1, 0, 1, 2], "fit": [-1.5, -0.5, 0.5, 1.5]},
                     F: {"scorer": "clf", "alphas": [0, 1], "fit": [0, 2]}},
          "cross_slopes": {S: {F: -0.4}}, "scorers": {S: {"spec": "vader"}, F: {"spec": "clf.json"}},
          "sampling": {"temperature": 0.7, "top_p": 1.0, "max_tokens": 48, "min_tokens": 32, "stop": []}}  # fmt: skip


@pytest.fixture
def calibrated_set(tiny_anchor_set, tmp_path) -> str:
    dest = tmp_path / "set"
    shutil.copytree(tiny_anchor_set, dest)
    save_calibration(open_store(dest), CURVES)
    return str(dest)


def test_scheduled_http_request_equals_the_engine_schedule(engine, tiny_anchor_set):
    args = ServeArgs(anchors=tiny_anchor_set)
    body = {"prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0,
            "interpolation": {"schedule": [{"until": 4, "mix": {"alpha": {S: 1}}},
                                           {"until": 9, "mix": {"anchors": {"formality.formal": 1}}},
                                           {"mix": {"alpha": {S: 0}}}]}}  # fmt: skip
    gen = generation_request(CompletionRequest.model_validate(body), args, mix_context(args, engine.layout))
    assert gen.mix == ResolvedMix(pieces=((4, POS), (9, FORMAL), (None, NEG)))
    assert gen.coeffs == POS
    ramp = {"prompt": PROMPTS[1], "max_tokens": 10, "temperature": 0,
            "interpolation": {"ramp": {"from": {"alpha": {S: 1}}, "to": {"alpha": {S: 0}}, "over": 6}}}  # fmt: skip
    chat = generation_request(CompletionRequest.model_validate(ramp), args, mix_context(args, engine.layout))
    assert chat.mix == ResolvedMix(ramp=(POS, NEG, 6))  # (chat bodies take the same path: generation_request)
    got = token_ids(engine, [gen, chat])
    for request in (gen, chat):
        assert got[request.request_id] == reference_greedy(engine, request)


def test_schedule_until_beyond_max_tokens_is_refused(engine, tiny_anchor_set):
    body = {"prompt": "x", "max_tokens": 8,
            "interpolation": {"schedule": [{"until": 9, "mix": {"alpha": {S: 1}}}, {"mix": {"alpha": {S: 0}}}]}}
    with pytest.raises(MixError, match="beyond max_tokens 8") as info:
        args = ServeArgs(anchors=tiny_anchor_set)
        generation_request(CompletionRequest.model_validate(body), args, mix_context(args, engine.layout))
    assert info.value.field == "interpolation.schedule[0].until"


def test_targets_resolve_through_the_calibration_beside_the_set(engine, calibrated_set):
    args = ServeArgs(anchors=calibrated_set)
    mixes = mix_context(args, engine.layout, *load_calibration(open_store(calibrated_set)))
    one = CompletionRequest.model_validate({"prompt": "x", "interpolation": {"target": {S: 0.3}}})
    assert generation_request(one, args, mixes).coeffs == pytest.approx((0.8, 0.2, 0.0, 0.0))
    both = CompletionRequest.model_validate({"prompt": "x", "interpolation": {"target": {S: 0.3, F: 1.0}}})
    report = generation_request(both, args, mixes).mix.report
    # joint: formality's alpha makes up for sentiment's drag (-0.4 * (0.8 - 0.5)) -> 0.5 + 0.06
    assert report["alpha"] == {S: pytest.approx(0.8), F: pytest.approx(0.56)}
    assert report["predicted"] == {S: pytest.approx(0.3), F: pytest.approx(1.0)}
    assert report["solve"] == "joint"
    # the calibrated mean holds for replies sampled as the calibration's were: the reply says how
    assert report["calibrated_with"] == {"temperature": 0.7, "max_tokens": 48, "min_tokens": 32}
    # so a target's replies run as long as the calibration's unless the request says otherwise
    assert generation_request(one, args, mixes).sampling.min_tokens == 32
    short = CompletionRequest.model_validate({"prompt": "x", "max_tokens": 8, "interpolation": {"target": {S: 0.3}}})
    assert generation_request(short, args, mixes).sampling.min_tokens == 8  # capped by the reply's max_tokens
    free = CompletionRequest.model_validate({"prompt": "x", "min_tokens": 0, "interpolation": {"target": {S: 0.3}}})
    assert generation_request(free, args, mixes).sampling.min_tokens == 0
    plain = CompletionRequest.model_validate({"prompt": "x", "interpolation": {"alpha": {S: 0.3}}})
    assert generation_request(plain, args, mixes).sampling.min_tokens == 0


def test_calibration_file_round_trip_and_refusals(calibrated_set):
    store = open_store(calibrated_set)
    assert read_calibration(store).curves[S].fit == (-1.5, -0.5, 0.5, 1.5)
    doc = json.loads(store.read_bytes(CALIBRATION_NAME))
    assert doc["anchor_set"]["version"] == 1 and len(doc["checksum"]) == 64
    tampered = {**doc, "curves": {**doc["curves"], S: {**doc["curves"][S], "fit": [0, 0, 0, 9]}}}
    store.write_bytes(CALIBRATION_NAME, json.dumps(tampered).encode())
    with pytest.raises(CalibrationError, match="checksum mismatch"):
        read_calibration(store)
    store.write_bytes(CALIBRATION_NAME, json.dumps(doc).encode())
    manifest = json.loads(store.read_bytes(MANIFEST_NAME))
    store.write_bytes(MANIFEST_NAME, json.dumps({**manifest, "version": 2}).encode())  # the set moved on
    with pytest.raises(CalibrationError, match="made for version 1 of this anchor set.*now version 2"):
        read_calibration(store)


def test_served_set_without_calibration_answers_targets_with_how_to_make_one(engine, tiny_anchor_set):
    body = CompletionRequest.model_validate({"prompt": "x", "interpolation": {"target": {S: 0.1}}})
    args = ServeArgs(anchors=tiny_anchor_set)
    mixes = mix_context(args, engine.layout, *load_calibration(open_store(tiny_anchor_set)))
    with pytest.raises(MixError, match="no calibration.*lerpray eval calibrate"):
        generation_request(body, args, mixes)


def test_a_tampered_calibration_does_not_stop_the_set_but_refuses_targets_saying_why(engine, calibrated_set):
    store = open_store(calibrated_set)
    store.write_bytes(CALIBRATION_NAME, store.read_bytes(CALIBRATION_NAME).replace(b'"vader"', b'"vadr"', 1))
    calibration, problem = load_calibration(store)
    assert calibration is None and "checksum mismatch" in problem
    args = ServeArgs(anchors=calibrated_set)
    mixes = mix_context(args, engine.layout, calibration, problem)
    assert generation_request(CompletionRequest(prompt="x"), args, mixes).coeffs == (0.25, 0.25, 0.25, 0.25)
    with pytest.raises(MixError, match="calibration cannot be used: .*checksum mismatch") as info:
        generation_request(CompletionRequest(prompt="x", interpolation={"target": {S: 0.1}}), args, mixes)
    assert info.value.field == "interpolation.target"


def _chat(server, body: dict) -> list:
    """The deployment's own request handling (auth, body, schema, set, policy, mix), without Ray or HTTP."""
    from starlette.requests import Request

    raw = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, **body}).encode()

    async def receive() -> dict:
        return {"type": "http.request", "body": raw, "more_body": False}

    request = Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}, receive)
    return asyncio.run(server._parse(request, "chat"))[2]


def test_a_chat_requests_mix_is_resolved_exactly_once(engine, calibrated_set, monkeypatch):
    """A preset, an inline id, a body mix, a schedule and a target: one call of the entry point each, and what it
    returns is what the engine request carries (the reply reads its report from there)."""
    import lerpray.steering
    from lerpray.serve import deployment, protocol

    user_class = deployment.LerpServer.func_or_class.__mro__[1]  # the class under Serve's ingress wrapper
    server = user_class.__new__(user_class)
    args = {"anchors": calibrated_set, "presets": {"upbeat": {"alpha": {S: 0.9}}}}
    user_class.__init__(server, args, engine_factory=lambda a: engine)
    calls = []

    def counted(*a, **kw):
        calls.append(kw)
        return resolve(*a, **kw)

    resolve = lerpray.steering.resolve
    for module in (lerpray.steering, protocol):
        monkeypatch.setattr(module, "resolve", counted)
    cases = {
        "preset": {"model": "upbeat"},
        "inline": {"model": "lerpray:sentiment=0.2"},
        "body": {"interpolation": {"alpha": {S: 0.7}}},
        "schedule": {"interpolation": {"schedule": [{"until": 2, "mix": {"alpha": {S: 1}}}, {"mix": {"alpha": {S: 0}}}]}},
        "target": {"interpolation": {"target": {S: 0.3}}},
    }
    try:
        for name, body in cases.items():
            calls.clear()
            (gen,) = _chat(server, body)
            assert len(calls) == 1, f"{name}: resolved {len(calls)} times"
            assert isinstance(gen.mix, ResolvedMix) and gen.mix.report["coefficients" if name != "schedule" else
                                                                          "schedule"]  # fmt: skip
    finally:
        for live in server.sets.values():
            live.batcher.close()


def test_cli_generate_takes_a_schedule_through_the_same_entry_point(tiny_anchor_set, base_dir, capsys):
    """`lerpray generate --mix` is resolved by lerpray.steering.resolve too: a schedule runs as the server's would."""
    from lerpray.cli import main
    from lerpray.model import Engine, GenerationRequest, SamplingParams

    mix = {"schedule": [{"until": 3, "mix": {"alpha": {S: 1}}}, {"mix": {"alpha": {S: 0}}}]}
    argv = ["generate", "--anchors", tiny_anchor_set, "--base", base_dir, "--mix", json.dumps(mix), "--temperature",
            "0", "--max-tokens", "8", PROMPTS[0]]
    assert main(argv) == 0
    request = GenerationRequest(mix=ResolvedMix(pieces=((3, POS), (None, NEG))), prompt=PROMPTS[0],
                                sampling=SamplingParams(temperature=0, max_tokens=8))
    engine = Engine.from_uri(tiny_anchor_set, base_model=base_dir)
    assert capsys.readouterr().out == engine.generate([request])[0].text + "\n"


def test_a_calibration_saved_while_the_set_is_served_answers_the_next_target(engine, tiny_anchor_set, tmp_path):
    from lerpray.serve.live import start_set

    dest = tmp_path / "set"
    shutil.copytree(tiny_anchor_set, dest)
    live = start_set(ServeArgs(anchors=str(dest)), lambda a: engine, observer=None)
    target = CompletionRequest.model_validate({"prompt": "x", "interpolation": {"target": {S: 0.3}}})
    try:
        with pytest.raises(MixError, match="has no calibration"):
            generation_request(target, live.args, live.mixes)
        assert not live.refresh_calibration(every_s=0)  # still none: nothing changes
        save_calibration(open_store(dest), CURVES)
        assert not live.refresh_calibration(every_s=3600)  # looked moments ago: the store is not read again yet
        assert live.refresh_calibration(every_s=0)
        assert generation_request(target, live.args, live.mixes).coeffs == pytest.approx((0.8, 0.2, 0.0, 0.0))
        assert not live.refresh_calibration(every_s=0) and not live.calibration_due(every_s=0)  # never re-reads
    finally:
        live.batcher.close()

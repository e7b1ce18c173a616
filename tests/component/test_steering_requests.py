"""Steering through the protocol layer on the tiny model: a schedule sent the HTTP way (a parsed request body) runs
exactly as the engine's MixSchedule (token for token vs the switching reference loop), targets resolve through a
calibration file beside the set, and calibration files for another set version, or tampered with, are refused."""

from __future__ import annotations

import json
import shutil

import pytest
from engine_helpers import PROMPTS, reference_greedy, token_ids

from lerpray.anchors import MANIFEST_NAME, open_store
from lerpray.anchors.calibration import CALIBRATION_NAME, CalibrationError, read_calibration, save_calibration
from lerpray.mixing import MixError
from lerpray.model import MixSchedule
from lerpray.serve.config import ServeArgs
from lerpray.serve.protocol import generation_request
from lerpray.serve.schemas import CompletionRequest
from lerpray.serve.steer import load_calibration, request_steering

pytestmark = pytest.mark.component

S, F = "sentiment", "formality"
POS, NEG, FORMAL, INFORMAL = (1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0)
# A synthetic calibration: sentiment's score = alpha - 0.5 on [-1, 2]; formality's = 2 * alpha on [0, 1]
CURVES = {"curves": {S: {"scorer": "vader", "alphas": [-1, 0, 1, 2], "fit": [-1.5, -0.5, 0.5, 1.5]},
                     F: {"scorer": "clf", "alphas": [0, 1], "fit": [0, 2]}},
          "cross_slopes": {S: {F: -0.4}}, "scorers": {S: {"spec": "vader"}, F: {"spec": "clf.json"}}}  # fmt: skip


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
    gen = generation_request(CompletionRequest.model_validate(body), args, engine.layout)
    assert gen.schedule == MixSchedule(pieces=((4, POS), (9, FORMAL), (None, NEG)))
    assert gen.coeffs == POS
    ramp = {"prompt": PROMPTS[1], "max_tokens": 10, "temperature": 0,
            "interpolation": {"ramp": {"from": {"alpha": {S: 1}}, "to": {"alpha": {S: 0}}, "over": 6}}}  # fmt: skip
    chat = generation_request(CompletionRequest.model_validate(ramp), args, engine.layout)
    assert chat.schedule == MixSchedule(ramp=(POS, NEG, 6))  # (chat bodies take the same path: generation_request)
    got = token_ids(engine, [gen, chat])
    for request in (gen, chat):
        assert got[request.request_id] == reference_greedy(engine, request)


def test_schedule_until_beyond_max_tokens_is_refused(engine, tiny_anchor_set):
    body = {"prompt": "x", "max_tokens": 8,
            "interpolation": {"schedule": [{"until": 9, "mix": {"alpha": {S: 1}}}, {"mix": {"alpha": {S: 0}}}]}}
    with pytest.raises(MixError, match="beyond max_tokens 8") as info:
        generation_request(CompletionRequest.model_validate(body), ServeArgs(anchors=tiny_anchor_set), engine.layout)
    assert info.value.field == "interpolation.schedule[0].until"


def test_targets_resolve_through_the_calibration_beside_the_set(engine, calibrated_set):
    args = ServeArgs(anchors=calibrated_set)
    one = CompletionRequest.model_validate({"prompt": "x", "interpolation": {"target": {S: 0.3}}})
    assert generation_request(one, args, engine.layout).coeffs == pytest.approx((0.8, 0.2, 0.0, 0.0))
    both = CompletionRequest.model_validate({"prompt": "x", "interpolation": {"target": {S: 0.3, F: 1.0}}})
    steering = request_steering(both, args, engine.layout, 16)
    # joint: formality's alpha makes up for sentiment's drag (-0.4 * (0.8 - 0.5)) -> 0.5 + 0.06
    assert steering.resolved["alpha"] == {S: pytest.approx(0.8), F: pytest.approx(0.56)}
    assert steering.resolved["predicted"] == {S: pytest.approx(0.3), F: pytest.approx(1.0)}
    assert steering.resolved["solve"] == "joint"


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
    load_calibration.cache_clear()
    body = CompletionRequest.model_validate({"prompt": "x", "interpolation": {"target": {S: 0.1}}})
    with pytest.raises(MixError, match="no calibration.*lerpray eval calibrate"):
        generation_request(body, ServeArgs(anchors=tiny_anchor_set), engine.layout)

"""Targets and schedules over HTTP on the package's app (app.py): a synthetic calibration of sentiment beside the
tiny set, none for formality; the 400s name the field and say what to change; replies report the resolved mix."""

from __future__ import annotations

import json

import httpx
import pytest

from lerpray.mixing import resolve_mix
from lerpray.model import GenerationRequest, ResolvedMix, SamplingParams

from .app import S

pytestmark = pytest.mark.integration

SCHEDULE = {"schedule": [{"until": 3, "mix": {"alpha": {S: 1}}}, {"mix": {"target": {S: -0.25}}}]}


def post(http, **body) -> httpx.Response:
    return http.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 6, "temperature": 0, **body})


def test_target_resolves_and_the_reply_reports_the_mix(http):
    response = post(http, interpolation={"target": {S: 0.3}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["resolved_mix"]["alpha"] == {S: pytest.approx(0.8)}
    assert body["resolved_mix"]["target"] == {S: 0.3} and body["resolved_mix"]["predicted"] == {S: pytest.approx(0.3)}
    assert body["interpolation"]["sentiment.positive"] == pytest.approx(0.8)
    assert json.loads(response.headers["x-lerpray-mix"]) == body["resolved_mix"]


def test_scheduled_stream_equals_the_engine_schedule_and_names_its_mix_in_a_header(http, engine):
    with http.stream("POST", "/v1/completions", json={"prompt": "Hello", "max_tokens": 8, "temperature": 0,
                                                     "stream": True, "interpolation": SCHEDULE}) as response:
        assert response.status_code == 200
        header = json.loads(response.headers["x-lerpray-mix"])
        chunks = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    text = "".join(json.loads(c)["choices"][0]["text"] for c in chunks[:-1])
    assert [p.get("until") for p in header["schedule"]] == [3, None]
    assert header["schedule"][1]["mix"]["alpha"] == {S: pytest.approx(0.25)}
    first, second = (resolve_mix({"alpha": {S: a}}, engine.layout) for a in (1.0, 0.25))
    assert ResolvedMix.from_json(header) == ResolvedMix(pieces=((3, first), (None, second)))  # the one JSON form
    request = GenerationRequest(mix=ResolvedMix(pieces=((3, first), (None, second))), prompt="Hello",
                                sampling=SamplingParams(temperature=0, max_tokens=8))  # fmt: skip
    assert text == engine.generate([request])[0].text


@pytest.mark.parametrize(("interpolation", "param", "words"), [
    ({"target": {S: 0.9}}, "interpolation.target.sentiment", ["reachable range [-0.5, 0.5]", '"extrapolate": true']),
    ({"target": {"formality": 0.1}}, "interpolation.target.formality", ["no curve for 'formality'",
                                                                         "lerpray eval calibrate"]),
    ({"schedule": [{"until": 4, "mix": {"alpha": {S: 1}}}]}, "interpolation.schedule[0].until",
     ["last piece must have no until"]),
    ({"schedule": [{"until": 99, "mix": {"alpha": {S: 1}}}, {"mix": {"alpha": {S: 0}}}]},
     "interpolation.schedule[0].until", ["beyond max_tokens 6"]),
    ({"ramp": {"from": {"alpha": {S: 0}}, "to": {"schedule": []}, "over": 4}}, "interpolation.ramp.to.schedule",
     ["do not nest"]),
])  # fmt: skip
def test_bad_steering_gets_a_400_naming_the_field(http, interpolation, param, words):
    response = post(http, interpolation=interpolation)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    for word in words:
        assert word in error["message"]


def test_extrapolated_target_is_the_nearest_reachable_point_reported_as_such(http):
    response = post(http, interpolation={"target": {S: 9.0}, "extrapolate": True})
    assert response.status_code == 200, response.text
    mix = response.json()["resolved_mix"]
    assert mix["alpha"] == {S: 2.0} and mix["clamped"] == {S: 1.5} and mix["extrapolate"] is True

"""Closed-loop steering over HTTP on the package's app (app.py: sentiment calibrated with VADER beside the tiny set):
a streamed reply with feedback reports, on each choice's last chunk, the mixes it used and its final score, and the
mixes it reports are the ones that wrote it (replayed as a schedule in the in-process engine, the text is equal)."""

from __future__ import annotations

import json

import pytest

from lerpray.mixing import resolve_mix
from lerpray.model import GenerationRequest, ResolvedMix, SamplingParams

from .app import S

pytestmark = pytest.mark.integration

FEEDBACK = {"target": {S: 0.3}, "feedback": {"every": 2, "gain": 1.0}}


def stream(http, **body) -> list[dict]:
    with http.stream("POST", "/v1/completions", json={"prompt": "Hello", "max_tokens": 8, "temperature": 0,
                                                     "stream": True, **body}) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_streamed_feedback_reports_each_choices_mixes_and_they_replay_its_text(http, engine):
    chunks = stream(http, interpolation=FEEDBACK, n=2)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        text = "".join(c["text"] for c in mine)
        last = mine[-1]
        assert last["finish_reason"] is not None
        mix = last["resolved_mix"]
        assert mix["alpha"] == {S: pytest.approx(0.8)} and mix["target"] == {S: 0.3}  # the open-loop start
        loop = mix["feedback"]
        assert (loop["every"], loop["gain"], loop["scorer"]) == (2, 1.0, {S: "vader"})
        steps = loop["trajectory"]
        assert steps[0] == {"token": 0, "alpha": {S: pytest.approx(0.8)}, "score": None}
        assert [s["token"] for s in steps] == [0, 2, 4, 6]
        live = [c["steering"] for c in mine if "steering" in c]  # the newest measurement, once, as the reply goes
        assert len(live) >= 2 and [p["token"] for p in live] == sorted({p["token"] for p in live})
        by_token = {s["token"]: s for s in steps}
        assert all(p == by_token[p["token"]] for p in live if p["token"] in by_token)  # 8: measured, not used
        assert all(0.0 <= s["alpha"][S] <= 1.0 for s in steps)
        assert any(s["alpha"][S] != pytest.approx(0.8) for s in steps[1:])  # the loop moved the mix
        assert loop["final_score"][S] == pytest.approx(vader(text), abs=1e-6)
        mixes = [resolve_mix({"alpha": s["alpha"]}, engine.layout) for s in steps]
        pieces = [(nxt["token"], m) for m, nxt in zip(mixes[:-1], steps[1:], strict=True)] + [(None, mixes[-1])]
        replay = GenerationRequest(mix=ResolvedMix(pieces=tuple(pieces)), prompt="Hello",
                                   sampling=SamplingParams(temperature=0, max_tokens=8))  # fmt: skip
        assert engine.generate([replay])[0].text == text


def vader(text: str) -> float:
    from lerpray.eval.scorers import get_scorer

    return get_scorer("vader").score([text])[0]


def test_a_plain_reply_with_feedback_reports_per_choice(http):
    response = http.post("/v1/completions", json={"prompt": ["Hello", "Bye"], "max_tokens": 6, "temperature": 0,
                                                  "interpolation": FEEDBACK})  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    loop = {"target": 0.3, "start": 0.8, "slope": 1.0, "lo": 0.0, "hi": 1.0}
    assert body["resolved_mix"]["feedback"] == {"every": 2, "gain": 1.0, "integral": 0.3, "scorer": {S: "vader"},
                                                "loops": {S: loop}, "mix": {}}  # fmt: skip
    for choice in body["choices"]:  # each prompt's request steered on its own text
        assert [s["token"] for s in choice["resolved_mix"]["feedback"]["trajectory"]] == [0, 2, 4]


@pytest.mark.parametrize(("interpolation", "param", "words"), [
    ({"alpha": {S: 0.5}, "feedback": {"every": 4}}, "interpolation.feedback", "needs a target"),
    ({"target": {S: 0.3}, "feedback": {"every": 0}}, "interpolation.feedback.every", "between 1"),
    ({"target": {S: 0.3}, "feedback": {"every": 6}}, "interpolation.feedback.every", "max_tokens 6"),
])  # fmt: skip
def test_bad_feedback_gets_a_400_naming_the_field(http, interpolation, param, words):
    response = http.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 6, "interpolation": interpolation})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"]

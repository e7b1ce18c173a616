"""Closed-loop requests at the serve edge (lerpray.serve.protocol, replies): the 400 for a calibration whose scorer
cannot run mid-reply, one Steerer per engine request, and each steered choice's `resolved_mix` in a reply."""

from __future__ import annotations

import pytest

from lerpray.feedback import Steerer
from lerpray.mixing import AnchorLayout
from lerpray.model.requests import TokenEvent
from lerpray.serve.config import ServeArgs
from lerpray.serve.errors import to_api_error
from lerpray.serve.protocol import generation_requests, mix_context
from lerpray.serve.replies import Reply
from lerpray.serve.schemas import CompletionRequest
from lerpray.targets import Calibration, Curve

pytestmark = pytest.mark.unit

POS, NEG = "sentiment.positive", "sentiment.negative"
LAYOUT = AnchorLayout(anchors=(POS, NEG), attributes={"sentiment": (NEG, POS)})
ARGS = ServeArgs(anchors="x")
FEEDBACK = {"target": {"sentiment": 0.1}, "feedback": {"every": 2}}


def requests(scorer: str, **body):
    context = mix_context(ARGS, LAYOUT, Calibration({"sentiment": Curve(scorer, (0.0, 1.0), (-0.5, 0.5))}))
    parsed = CompletionRequest.model_validate({"prompt": "hi", "max_tokens": 6, "interpolation": FEEDBACK, **body})
    return generation_requests(parsed, ARGS, context)


def test_a_classifier_scorer_is_a_400_naming_the_feedback_field():
    with pytest.raises(Exception) as err:  # noqa: PT011 -- the mapping below is what is tested
        requests("/sets/classifier-sentiment.json")
    api = to_api_error(err.value)
    assert api.status == 400 and api.json()["error"]["param"] == "interpolation.feedback"
    assert "cannot run on a reply every few tokens" in api.json()["error"]["message"]


def test_each_prompt_gets_its_own_steerer_and_each_choice_reports_its_loop():
    gens = requests("vader", prompt=["good", "bad"], n=2)
    assert all(isinstance(g.steer, Steerer) for g in gens) and gens[0].steer is not gens[1].steer
    reply = Reply("completions", gens, "m", LAYOUT.anchors)
    for g in gens:
        for i in range(2):
            g.steer(i, "what a wonderful day" if i else "awful", 2)  # as the engine's rows do
            g.steer(i, "what a wonderful day" if i else "awful", 3)
            chunk = reply.add(TokenEvent(g.request_id, 5, "x", "length", 1, 3, i))
            assert chunk["choices"][0]["resolved_mix"]["feedback"]["trajectory"][1]["token"] == 2
    choices = reply.response()["choices"]
    scores = [c["resolved_mix"]["feedback"]["final_score"]["sentiment"] for c in choices]
    assert scores[0] < 0 < scores[1] and scores[0] == scores[2]  # each choice on its own text

"""The predictive closed loop on the request path: a target with feedback resolved by lerpray.steering.resolve against
a calibration with a partial-reply model, its Steerer in the engine (the tiny interpolated Llama), the row switching
to the controller's alpha from the token after each update, inside the symmetric bounds around the open-loop alpha."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from engine_helpers import PROMPTS

from lerpray.feedback import Steerer
from lerpray.mixing import ExtrapolationBounds, resolve_mix
from lerpray.model import GenerationRequest, ResolvedMix, SamplingParams
from lerpray.reply_model import PartialModel
from lerpray.steering import MixContext, resolve
from lerpray.targets import Calibration, Curve

pytestmark = pytest.mark.component

GREEDY = SamplingParams(temperature=0, max_tokens=10)
CURVE = Curve("vader", (-1.0, 0.0, 1.0, 2.0), (-0.3, 0.0, 0.3, 0.6))  # 0.3 per alpha
MODEL = PartialModel((2, 8), (0.0, 0.0), (0.05, 0.2), (1.0, 1.0), (0.9, 0.3))
CAL = Calibration({"sentiment": CURVE}, partial={"sentiment": MODEL})


def tokens_of(engine, requests) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for event in engine.stream(requests):
        out.setdefault(event.request_id, []).append(event.token_id)
    return out


def test_a_target_with_feedback_steers_each_reply_by_its_own_partial_scores(engine):
    context = MixContext(engine.layout, ExtrapolationBounds(), CAL)
    mix = resolve(context, interpolation={"target": {"sentiment": 0.12}, "feedback": {"every": 2},
                                          "extrapolate": True}, max_tokens=10)  # fmt: skip
    assert mix.report["feedback"]["controller"] == "predictive" and mix.feedback.every == 2
    start = mix.report["alpha"]["sentiment"]
    assert start == pytest.approx(0.4)
    high = Steerer(mix.feedback, {"sentiment": lambda text: 1.0}, engine.layout)  # every partial far too positive
    flat = Steerer(mix.feedback, {"sentiment": lambda text: 0.0}, engine.layout)  # about the calibrated mean
    requests = [
        GenerationRequest(mix=mix, prompt=PROMPTS[0], request_id="high", sampling=GREEDY, steer=high),
        GenerationRequest(mix=mix, prompt=PROMPTS[0], request_id="flat", sampling=GREEDY, steer=flat),
    ]
    texts = tokens_of(engine, requests)
    # too positive: from the first update on, the lowest alpha the symmetric bounds allow (0.4 - 1.4)
    alphas = [step["alpha"]["sentiment"] for step in high.trajectories[0]]
    assert alphas and all(a == pytest.approx(-1.0) for a in alphas)
    # on the partial mean at alpha 0.4 after 2 tokens (0.02): the first update keeps a0 within the carry's reach
    assert flat.trajectories[0][0]["alpha"]["sentiment"] == pytest.approx(0.4 + 0.02 / 0.3 / 0.9)
    # the steered reply is the schedule that switches to its first update's coefficients after token 2
    low = resolve_mix({"alpha": {"sentiment": -1.0}, "extrapolate": True}, engine.layout, ExtrapolationBounds())
    schedule = ResolvedMix(pieces=((2, mix.coeffs), (None, tuple(low))))
    plain = GenerationRequest(mix=schedule, prompt=PROMPTS[0], request_id="high", sampling=GREEDY)
    reference = tokens_of(engine, [plain, replace(plain, request_id="x")])
    assert texts["high"] == reference["high"]
    report = high.report(0)
    assert report["controller"] == "predictive" and report["trajectory"][0]["alpha"] == {"sentiment": start}
    assert json.loads(json.dumps(report))["partial"]["sentiment"]["tokens"] == [2, 8]

"""lerpray.reply_model and the predictive closed loop (lerpray.feedback.predict): the partial-reply model fitted
from synthetic sweeps whose structure is known by construction, and the controller on scripted replies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lerpray.feedback import Loop, LoopState, Steerer, predict
from lerpray.mixing import AnchorLayout, ExtrapolationBounds, MixError
from lerpray.reply_model import AHEAD_MIN, PartialModel, alpha_rest, fit_partial
from lerpray.steering import MixContext, ResolvedMix, resolve
from lerpray.targets import Calibration, Curve

pytestmark = pytest.mark.unit


def sweep(n: int = 4000, seed: int = 0):
    """Replies whose final score = 0.3 * alpha + r, r = r_early + r_late; the first 4 tokens score
    0.1 * alpha + r_early (a third of alpha's effect is written by then), after 8 tokens the final score."""
    rng = np.random.default_rng(seed)
    a = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], n)
    early, late = rng.normal(0, 0.2, n), rng.normal(0, 0.1, n)
    final = 0.3 * a + early + late
    partial = np.column_stack([np.zeros(n), 0.1 * a + early, final])  # checkpoints 1, 4, 8
    return a, final, partial


def test_fit_recovers_the_partial_means_carry_and_share_ahead():
    model = fit_partial(*sweep(), tokens=[1, 4, 8])
    assert model.tokens == (1, 4, 8)
    # after 1 token nothing is written: no offset to carry, all of alpha's effect still ahead
    assert model.carry[0] == 0.0 and model.ahead[0] == 1.0 and model.slope[0] == 0.0
    # after 4 tokens: m_4 = 0.1 alpha; the early offset lasts to the end whole (carry 1); 1 - 0.1/0.3 still ahead
    assert model.slope[1] == pytest.approx(0.1, abs=0.02) and model.intercept[1] == pytest.approx(0.0, abs=0.02)
    assert model.carry[1] == pytest.approx(1.0, abs=0.05) and model.ahead[1] == pytest.approx(2 / 3, abs=0.07)
    # the whole reply: carry 1 and nothing left to steer (the floor)
    assert model.carry[2] == pytest.approx(1.0) and model.ahead[2] == AHEAD_MIN


def test_noise_that_does_not_last_is_shrunk_by_the_carry():
    rng = np.random.default_rng(1)
    a = rng.choice([0.0, 0.5, 1.0], 4000)
    final = 0.3 * a + rng.normal(0, 0.1, 4000)
    partial = (final + rng.normal(0, 0.1, 4000))[:, None]  # partial = final + as much noise again
    assert fit_partial(a, final, partial, [4]).carry[0] == pytest.approx(0.5, abs=0.05)


def test_model_interpolates_between_checkpoints_and_reads_back():
    model = PartialModel((2, 6), (0.0, 0.2), (0.1, 0.3), (0.5, 1.0), (1.0, 0.5))
    assert model.at(4) == pytest.approx((0.1, 0.2, 0.75, 0.75))
    assert model.at(1) == model.at(2) and model.at(100) == model.at(6)  # flat outside
    assert PartialModel.from_report(json.loads(json.dumps(model.report()))) == model
    with pytest.raises(ValueError, match="increasing"):
        PartialModel((4, 2), (0, 0), (0, 0), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="one value per reply"):
        fit_partial([0.0, 1.0], [0.0, 1.0], [[0.0]], [1])


MODEL = PartialModel((4,), (0.0,), (0.1,), (1.0,), (0.5,))  # m_4 = 0.1 alpha, carry 1, half of the effect ahead


def test_alpha_rest_cancels_the_predicted_offset():
    kw = {"start": 0.5, "slope": 0.3, "lo": -1.0, "hi": 2.0}
    # on the calibrated partial mean: no offset, keep a0
    assert alpha_rest(MODEL, 4, 0.05, 0.5, **kw) == pytest.approx(0.5)
    # 0.06 above it: final heads 0.06 high; half the effect is ahead, so alpha drops by 0.06 / 0.3 / 0.5 = 0.4
    assert alpha_rest(MODEL, 4, 0.11, 0.5, **kw) == pytest.approx(0.1)
    assert alpha_rest(MODEL, 4, -0.01, 0.5, **kw) == pytest.approx(0.9)  # below: more of the high pole
    assert alpha_rest(MODEL, 4, 0.11, 0.5, gain=0.5, **kw) == pytest.approx(0.3)  # half the correction
    # the text so far was written at 0.7 (and scored as expected there): half of its extra 0.2 is locked in
    assert alpha_rest(MODEL, 4, 0.07, 0.7, **kw) == pytest.approx(0.3)
    falling = {**kw, "slope": -0.3}  # a scorer whose high pole is alpha 0: the step changes sign
    descending = PartialModel((4,), (0.0,), (-0.1,), (1.0,), (0.5,))
    assert alpha_rest(descending, 4, -0.11, 0.5, **falling) == pytest.approx(0.1)
    assert alpha_rest(MODEL, 4, 1.0, 0.5, **{**kw, "lo": 0.2}) == 0.2  # clipped


def test_predict_tracks_the_alpha_text_was_written_with_and_keeps_symmetric_bounds():
    loop = Loop(target=0.15, start=0.5, slope=0.3, lo=-1.0, hi=2.0)
    state = predict(loop, MODEL, LoopState(0.5), 0.11, 4, 1.0)
    assert state == LoopState(pytest.approx(0.1), 0.0, pytest.approx(2.0), 4)  # 4 tokens at 0.5
    later = predict(loop, MODEL, state, 0.11, 8, 1.0)
    assert later.written == pytest.approx(2.0 + 4 * 0.1) and later.tokens == 8
    near = Loop(target=0.27, start=0.9, slope=0.3, lo=0.0, hi=1.0)  # 0.1 to the top: 0.1 to each side
    assert predict(near, MODEL, LoopState(0.9), -5.0, 4, 1.0).alpha == pytest.approx(1.0)
    assert predict(near, MODEL, LoopState(0.9), 5.0, 4, 1.0).alpha == pytest.approx(0.8)


# ---- through the request path ------------------------------------------------------------------------------

POS, NEG = "sentiment.positive", "sentiment.negative"
LAYOUT = AnchorLayout(anchors=(POS, NEG), attributes={"sentiment": (NEG, POS)})
CURVE = Curve("vader", (-1.0, 0.0, 1.0, 2.0), (-0.3, 0.0, 0.3, 0.6))
CAL = Calibration({"sentiment": CURVE}, partial={"sentiment": MODEL})


def test_a_calibration_with_a_partial_model_resolves_to_the_predictive_loop():
    context = MixContext(LAYOUT, ExtrapolationBounds(), CAL)
    got = resolve(context, interpolation={"target": {"sentiment": 0.15}, "feedback": {"every": 4},
                                          "extrapolate": True}, max_tokens=32)  # fmt: skip
    fb = got.feedback
    assert fb.partial == {"sentiment": MODEL} and fb.gains.proportional == 1.0  # the predictive defaults
    assert resolve(context, interpolation={"target": {"sentiment": 0.15}, "feedback": {}}).feedback.every == 4
    assert fb.loops["sentiment"] == Loop(0.15, 0.5, 0.3, -1.0, 2.0)
    assert got.report["feedback"]["controller"] == "predictive"
    assert ResolvedMix.from_json(json.loads(json.dumps(got.report))).feedback == fb  # a batch plan's row
    # the hook: a reply whose first 4 tokens score 0.06 above the calibrated partial mean gets alpha 0.1
    steer = Steerer(fb, {"sentiment": lambda text: float(text)}, LAYOUT)
    assert steer(0, "0.05", 3) is None
    assert steer(0, "0.11", 4) == pytest.approx((0.1, 0.9))
    assert steer(1, "0.05", 4) == pytest.approx((0.5, 0.5))  # another choice, its own loop
    assert steer.trajectories[0][-1] == {
        "token": 4,
        "alpha": {"sentiment": pytest.approx(0.1)},
        "score": {"sentiment": 0.11},
    }


def test_without_a_partial_model_the_pi_loop_and_its_knobs_stay():
    context = MixContext(LAYOUT, ExtrapolationBounds(), Calibration({"sentiment": CURVE}))
    fb = resolve(context, interpolation={"target": {"sentiment": 0.15}, "feedback": {}}, max_tokens=32).feedback
    assert fb.partial == {} and fb.gains.proportional == 0.5
    with pytest.raises(MixError, match="between 0 and 2"):
        resolve(MixContext(LAYOUT, None, CAL), interpolation={"target": {"sentiment": 0.15},
                                                             "feedback": {"gain": 3}})  # fmt: skip

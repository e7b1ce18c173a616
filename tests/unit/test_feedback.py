"""lerpray.feedback: the PI controller over alpha on scripted plants, the `feedback` form through
lerpray.steering.resolve, and the Steerer hook's coefficients and trajectory.

Plants are scripted: score = slope * alpha + offset (an offset the calibration did not see), so the fixed point of
the loop is known by hand: alpha* = (target - offset) / slope."""

from __future__ import annotations

import json

import pytest

from lerpray.feedback import Gains, Loop, LoopState, Steerer, update
from lerpray.mixing import AnchorLayout, ExtrapolationBounds, MixError
from lerpray.steering import MixContext, ResolvedMix, resolve
from lerpray.targets import Calibration, Curve

pytestmark = pytest.mark.unit

GAINS = Gains()


def run(loop: Loop, plant, steps: int, gains: Gains = GAINS) -> list[float]:
    """The alphas a loop sets when each score is plant(previous alpha)."""
    state, alphas = LoopState(loop.start), []
    for _ in range(steps):
        state = update(loop, state, plant(state.alpha), gains)
        alphas.append(state.alpha)
    return alphas


def test_alpha_moves_toward_the_target_in_the_right_direction():
    loop = Loop(target=0.5, start=0.5, slope=1.0, lo=0.0, hi=1.0)
    assert update(loop, LoopState(0.5), 0.2, GAINS).alpha > 0.5  # score below target: more of the high pole
    assert update(loop, LoopState(0.5), 0.8, GAINS).alpha < 0.5
    assert update(loop, LoopState(0.5), 0.5, GAINS) == LoopState(0.5, 0.0)  # on target: nothing moves
    falling = Loop(target=0.5, start=0.5, slope=-2.0, lo=0.0, hi=1.0)  # a scorer whose high pole is alpha 0
    assert update(falling, LoopState(0.5), 0.2, GAINS).alpha < 0.5


def test_converges_on_a_linear_plant_with_an_offset_the_calibration_missed():
    # calibrated as score = alpha, so the open-loop alpha for 0.4 is 0.4; the real plant is alpha - 0.2
    loop = Loop(target=0.4, start=0.4, slope=1.0, lo=0.0, hi=1.0)
    alphas = run(loop, lambda a: a - 0.2, 60)
    assert alphas[-1] == pytest.approx(0.6, abs=1e-6)  # the integral absorbs the offset: (0.4 + 0.2) / 1
    assert abs(alphas[5] - 0.6) < abs(alphas[0] - 0.6)
    steep = Loop(target=1.0, start=0.25, slope=4.0, lo=0.0, hi=1.0)  # a scorer in other units: same behaviour
    assert run(steep, lambda a: 4.0 * a - 0.4, 60)[-1] == pytest.approx(0.35, abs=1e-6)


def test_stays_within_bounds_and_extrapolation_bounds():
    hull = Loop(target=5.0, start=0.9, slope=1.0, lo=0.0, hi=1.0)  # unreachable: saturates at the top
    alphas = run(hull, lambda a: a, 20)
    assert all(0.0 <= a <= 1.0 for a in alphas) and alphas[-1] == 1.0
    wide = Loop(target=-5.0, start=-0.5, slope=1.0, lo=-1.0, hi=2.0)
    alphas = run(wide, lambda a: a, 20)
    assert all(-1.0 <= a <= 2.0 for a in alphas) and alphas[-1] == -1.0


def test_no_windup_past_a_bound():
    loop = Loop(target=2.0, start=0.5, slope=1.0, lo=0.0, hi=1.0)
    state = LoopState(0.5)
    for _ in range(200):  # a long unreachable stretch
        state = update(loop, state, 0.0, GAINS)
    assert state.alpha == 1.0 and state.integral <= 0.5  # the integral never exceeds hi - start
    # the plant changes so that the reply now overshoots: alpha leaves the bound at the first update
    assert update(loop, state, 3.0, GAINS).alpha < 1.0


def test_zero_gains_keep_the_open_loop_alpha():
    loop = Loop(target=0.4, start=0.3, slope=1.0, lo=0.0, hi=1.0)
    assert run(loop, lambda a: 0.9, 5, Gains(0.0, 0.0)) == [0.3] * 5


# ---- the request form ---------------------------------------------------------------------------------------

POS, NEG = "sentiment.positive", "sentiment.negative"
LAYOUT = AnchorLayout(anchors=(POS, NEG), attributes={"sentiment": (NEG, POS)})
CAL = Calibration({"sentiment": Curve("vader", (0.0, 1.0), (-0.5, 0.5))})
BOUNDS = ExtrapolationBounds()


def closed(mix, calibration=CAL, max_tokens=None, bounds=BOUNDS):
    return resolve(MixContext(LAYOUT, bounds, calibration), interpolation=mix, max_tokens=max_tokens)


def test_feedback_resolves_to_the_open_loop_start_and_a_loop():
    got = closed({"target": {"sentiment": 0.1}, "feedback": {"every": 4, "gain": 0.4}})
    assert got.coeffs == pytest.approx((0.6, 0.4))  # the open-loop alpha 0.6
    fb = got.feedback
    assert fb.every == 4 and fb.gains == Gains(0.4, 0.3) and fb.scorers == {"sentiment": "vader"}
    assert fb.loops["sentiment"] == Loop(0.1, 0.6, 1.0, 0.0, 1.0)
    loop = {"target": 0.1, "start": 0.6, "slope": 1.0, "lo": 0.0, "hi": 1.0}
    assert got.report["feedback"] == {"every": 4, "gain": 0.4, "integral": 0.3, "scorer": {"sentiment": "vader"},
                                      "loops": {"sentiment": loop}, "mix": {}}  # fmt: skip
    again = ResolvedMix.from_json(json.loads(json.dumps(got.report)))  # a batch plan's row
    assert again == got and again.feedback == fb and again.scheduled


@pytest.mark.parametrize(("mix", "field", "words"), [
    ({"alpha": {"sentiment": 0.5}, "feedback": {}}, "interpolation.feedback", "needs a target"),
    ({"target": {"sentiment": 0.1}, "feedback": {"every": 0}}, "interpolation.feedback.every", "between 1"),
    ({"target": {"sentiment": 0.1}, "feedback": {"every": 2.5}}, "interpolation.feedback.every", "whole number"),
    ({"target": {"sentiment": 0.1}, "feedback": {"every": 16}}, "interpolation.feedback.every", "max_tokens 16"),
    ({"target": {"sentiment": 0.1}, "feedback": {"gain": -1}}, "interpolation.feedback.gain", "between 0 and 2"),
    ({"target": {"sentiment": 0.1}, "feedback": {"speed": 1}}, "interpolation.feedback.speed", "unknown key"),
    ({"target": {"sentiment": 0.1}, "feedback": 8}, "interpolation.feedback", "must be an object"),
])  # fmt: skip
def test_bad_feedback_names_its_field(mix, field, words):
    with pytest.raises(MixError) as err:
        closed(mix, max_tokens=16)
    assert err.value.field == field and words in err.value.message


def test_a_scorer_that_cannot_run_mid_reply_is_refused():
    cal = Calibration({"sentiment": Curve("/sets/clf-sentiment.json", (0.0, 1.0), (0.1, 0.9))})
    with pytest.raises(MixError) as err:
        closed({"target": {"sentiment": 0.5}, "feedback": {}}, calibration=cal)
    assert err.value.field == "interpolation.feedback" and "cannot run on a reply every few tokens" in err.value.message


def test_steerer_rescoring_every_few_tokens_per_choice():
    mix = closed({"target": {"sentiment": 0.1}, "feedback": {"every": 2, "gain": 1.0, "integral": 0.0}})
    scripted = {"low": -0.4, "high": 0.6}  # scores by text
    steer = Steerer(mix.feedback, {"sentiment": lambda text: scripted[text]}, LAYOUT)
    assert steer(0, "low", 1) is None  # not a rescoring token
    up = steer(0, "low", 2)  # error +0.5 at slope 1: alpha 0.6 + 0.5 = 1.1, clamped to the hull
    assert up == pytest.approx((1.0, 0.0))
    down = steer(1, "high", 2)  # choice 1 on its own text: 0.6 - 0.5
    assert down == pytest.approx((0.1, 0.9))
    steer(0, "high", 3)  # the row's last token: its whole text
    report = steer.report(0)
    assert report["trajectory"] == [
        {"token": 0, "alpha": {"sentiment": 0.6}, "score": None},
        {"token": 2, "alpha": {"sentiment": 1.0}, "score": {"sentiment": -0.4}},
    ]
    assert report["final_score"] == {"sentiment": 0.6}


def test_steerer_holds_while_the_text_has_no_score():
    """A scorer with no score for the text so far (FKGL of a fragment with no words: NaN) leaves the row's alpha
    where it was instead of sending NaN to the engine."""
    mix = closed({"target": {"sentiment": 0.1}, "feedback": {"every": 2, "gain": 1.0, "integral": 0.0}})
    scripted = {"": float("nan"), "low": -0.4}
    steer = Steerer(mix.feedback, {"sentiment": lambda text: scripted[text]}, LAYOUT)
    assert steer(0, "", 2) == pytest.approx((0.6, 0.4))  # the open-loop alpha, unchanged
    assert steer(0, "low", 4) == pytest.approx((1.0, 0.0))  # then the loop acts on the first score
    steer(0, "", 6)  # the reply ends with no score: the report says null, never NaN (invalid JSON)
    report = steer.report(0)
    assert report["trajectory"][1]["score"] == {"sentiment": None} and report["final_score"] == {"sentiment": None}
    json.dumps(report, allow_nan=False)

"""lerpray.steering: schedules, ramps and targets in the `interpolation` object, the field of every error, and the
ResolvedMix's one JSON form.

Coefficients are worked out by hand from c[high] = lambda * alpha, c[low] = lambda * (1 - alpha).
"""

from __future__ import annotations

import pytest

from lerpray.mixing import AnchorLayout, ExtrapolationBounds, MixError
from lerpray.steering import MixContext, ResolvedMix, resolve
from lerpray.targets import Calibration, Curve

pytestmark = pytest.mark.unit

POS, FORMAL, NEG, INFORMAL = "sentiment.positive", "formality.formal", "sentiment.negative", "formality.informal"
LAYOUT = AnchorLayout(anchors=(POS, FORMAL, NEG, INFORMAL),
                      attributes={"sentiment": (NEG, POS), "formality": (INFORMAL, FORMAL)})  # fmt: skip
S, F = "sentiment", "formality"
# sentiment: score = -0.5 + alpha on [-1, 2] (reachable [-0.5, 0.5] in the hull); formality: 2 * alpha
DEFAULT = ExtrapolationBounds()


def resolve_steering(mix, layout, bounds=DEFAULT, *, calibration=None, max_tokens=None) -> ResolvedMix:
    return resolve(MixContext(layout, bounds, calibration), interpolation=mix, max_tokens=max_tokens)


CAL = Calibration({S: Curve("vader", (-1.0, 0.0, 1.0, 2.0), (-1.5, -0.5, 0.5, 1.5)),
                   F: Curve("clf", (0.0, 0.5, 1.0), (0.0, 1.0, 2.0))})  # fmt: skip


def test_plain_mix_reports_its_alphas_and_normalised_lambdas():
    got = resolve_steering({"alpha": {S: 0.8, F: 0.2}}, LAYOUT)
    assert got.coeffs == pytest.approx((0.4, 0.1, 0.1, 0.4))
    assert got.report == {"alpha": {S: 0.8, F: 0.2}, "lambda": {S: 0.5, F: 0.5}, "coefficients": list(got.coeffs)}
    assert not got.scheduled
    assert resolve_steering({"anchors": {POS: 1}}, LAYOUT).report == {"anchors": {POS: 1.0},
                                                                       "coefficients": [1.0, 0.0, 0.0, 0.0]}


def test_schedule_pieces_in_order():
    mix = {"schedule": [{"until": 4, "mix": {"alpha": {S: 1}}}, {"until": 8, "mix": {"anchors": {FORMAL: 1}}},
                        {"mix": {"alpha": {S: 0}}}]}  # fmt: skip
    got = resolve_steering(mix, LAYOUT, max_tokens=16)
    assert got.pieces == ((4, (1.0, 0.0, 0.0, 0.0)), (8, (0.0, 1.0, 0.0, 0.0)), (None, (0.0, 0.0, 1.0, 0.0)))
    assert got.coeffs == (1.0, 0.0, 0.0, 0.0) and got.scheduled
    assert [p.get("until") for p in got.report["schedule"]] == [4, 8, None]
    assert got.report["schedule"][1]["mix"] == {"anchors": {FORMAL: 1.0}, "coefficients": [0.0, 1.0, 0.0, 0.0]}


def test_ramp():
    mix = {"ramp": {"from": {"alpha": {S: 0}}, "to": {"alpha": {S: 1}}, "over": 10}}
    got = resolve_steering(mix, LAYOUT, max_tokens=10)
    assert got.ramp == ((0.0, 0.0, 1.0, 0.0), (1.0, 0.0, 0.0, 0.0), 10)
    assert got.coeffs == (0.0, 0.0, 1.0, 0.0)
    assert got.report["ramp"]["over"] == 10


SCHEDULE_ERRORS = [
    ("empty", {"schedule": []}, "interpolation.schedule", "non-empty array"),
    ("not-a-list", {"schedule": {"mix": {}}}, "interpolation.schedule", "got object"),
    ("out-of-order", {"schedule": [{"until": 8, "mix": {"alpha": {S: 1}}}, {"until": 4, "mix": {"alpha": {S: 1}}},
                                   {"mix": {"alpha": {S: 0}}}]}, "interpolation.schedule[1].until", "in order"),
    ("overlapping", {"schedule": [{"until": 4, "mix": {"alpha": {S: 1}}}, {"until": 4, "mix": {"alpha": {S: 1}}},
                                  {"mix": {"alpha": {S: 0}}}]}, "interpolation.schedule[1].until", "overlaps"),
    ("empty-piece", {"schedule": [{"until": 0, "mix": {"alpha": {S: 1}}}, {"mix": {"alpha": {S: 0}}}]},
     "interpolation.schedule[0].until", "empty"),
    ("no-final-open-piece", {"schedule": [{"until": 4, "mix": {"alpha": {S: 1}}}]},
     "interpolation.schedule[0].until", "last piece must have no until"),
    ("until-missing", {"schedule": [{"mix": {"alpha": {S: 1}}}, {"mix": {"alpha": {S: 0}}}]},
     "interpolation.schedule[0].until", "required"),
    ("until-beyond-max-tokens", {"schedule": [{"until": 17, "mix": {"alpha": {S: 1}}}, {"mix": {"alpha": {S: 0}}}]},
     "interpolation.schedule[0].until", "beyond max_tokens 16"),
    ("until-fraction", {"schedule": [{"until": 1.5, "mix": {"alpha": {S: 1}}}, {"mix": {"alpha": {S: 0}}}]},
     "interpolation.schedule[0].until", "whole number"),
    ("until-bool", {"schedule": [{"until": True, "mix": {"alpha": {S: 1}}}, {"mix": {"alpha": {S: 0}}}]},
     "interpolation.schedule[0].until", "whole number"),
    ("mix-missing", {"schedule": [{"until": 4}, {"mix": {"alpha": {S: 0}}}]}, "interpolation.schedule[0].mix",
     "required"),
    ("nested", {"schedule": [{"until": 4, "mix": {"schedule": []}}, {"mix": {"alpha": {S: 0}}}]},
     "interpolation.schedule[0].mix.schedule", "do not nest"),
    ("nested-ramp", {"schedule": [{"mix": {"ramp": {}}}]}, "interpolation.schedule[0].mix.ramp", "do not nest"),
    ("bad-piece-mix", {"schedule": [{"until": 4, "mix": {"alpha": {S: 3}}}, {"mix": {"alpha": {S: 0}}}]},
     "interpolation.schedule[0].mix.alpha.sentiment", "must be in [0, 1]"),
    ("unknown-piece-key", {"schedule": [{"mix": {"alpha": {S: 0}}, "from": 2}]}, "interpolation.schedule[0].from",
     "unknown key"),
    ("schedule-and-alpha", {"schedule": [{"mix": {"alpha": {S: 0}}}], "alpha": {S: 1}}, "interpolation.alpha",
     "cannot go with schedule"),
    ("schedule-and-ramp", {"schedule": [{"mix": {"alpha": {S: 0}}}], "ramp": {}}, "interpolation.ramp", "not both"),
    ("ramp-over-0", {"ramp": {"from": {"alpha": {S: 0}}, "to": {"alpha": {S: 1}}, "over": 0}},
     "interpolation.ramp.over", ">= 1"),
    ("ramp-over-beyond", {"ramp": {"from": {"alpha": {S: 0}}, "to": {"alpha": {S: 1}}, "over": 99}},
     "interpolation.ramp.over", "beyond max_tokens"),
    ("ramp-missing-to", {"ramp": {"from": {"alpha": {S: 0}}, "over": 4}}, "interpolation.ramp.to", "required"),
    ("ramp-bad-end", {"ramp": {"from": {"alpha": {S: 0}}, "to": {"anchors": {"x": 1}}, "over": 4}},
     "interpolation.ramp.to.anchors.x", "unknown anchor"),
]  # fmt: skip


@pytest.mark.parametrize(("mix", "field", "message"), [c[1:] for c in SCHEDULE_ERRORS],
                         ids=[c[0] for c in SCHEDULE_ERRORS])  # fmt: skip
def test_schedule_errors_name_the_field(mix, field, message):
    with pytest.raises(MixError) as info:
        resolve_steering(mix, LAYOUT, calibration=CAL, max_tokens=16)
    assert info.value.field == field
    assert message in info.value.message


def test_single_target_inverts_the_curve():
    got = resolve_steering({"target": {S: 0.25}}, LAYOUT, calibration=CAL)
    assert got.report["alpha"] == {S: 0.75}
    assert got.report["predicted"] == {S: 0.25} and got.report["target"] == {S: 0.25}
    assert got.coeffs == pytest.approx((0.75, 0.0, 0.25, 0.0))


def test_target_out_of_range_gives_the_reachable_range():
    with pytest.raises(MixError) as info:
        resolve_steering({"target": {S: 0.9}}, LAYOUT, calibration=CAL)
    assert info.value.field == "interpolation.target.sentiment"
    assert "reachable range [-0.5, 0.5]" in info.value.message
    assert '"extrapolate": true' in info.value.message and "[-1, 2]" in info.value.message


def test_target_with_extrapolate_goes_beyond_the_hull_and_clamps_at_the_bounds():
    got = resolve_steering({"target": {S: 0.9}, "extrapolate": True}, LAYOUT, calibration=CAL)
    assert got.report["alpha"] == {S: pytest.approx(1.4)} and "clamped" not in got.report
    narrow = ExtrapolationBounds(alpha_min=-0.5, alpha_max=1.5)
    far = resolve_steering({"target": {S: 5.0}, "extrapolate": True}, LAYOUT, narrow, calibration=CAL)
    assert far.report["alpha"] == {S: 1.5} and far.report["clamped"] == {S: 1.0}
    assert far.report["extrapolate"] is True


def test_target_without_calibration_says_how_to_make_one():
    with pytest.raises(MixError) as info:
        resolve_steering({"target": {S: 0.1}}, LAYOUT)
    assert info.value.field == "interpolation.target"
    assert "no calibration" in info.value.message and "lerpray eval calibrate" in info.value.message


@pytest.mark.parametrize(("mix", "field", "message"), [
    ({"target": {"humor": 0.1}}, "interpolation.target.humor", "unknown attribute"),
    ({"target": {S: 0.1}, "alpha": {F: 0.5}}, "interpolation.alpha", "not both"),
    ({"target": {S: True}}, "interpolation.target.sentiment", "finite number"),
    ({"target": {S: 0.1}, "extrapolate": "yes"}, "interpolation.extrapolate", "true or false"),
    ({"schedule": [{"until": 2, "mix": {"target": {S: 0.9}}}, {"mix": {"alpha": {S: 0}}}]},
     "interpolation.schedule[0].mix.target.sentiment", "reachable range"),
])  # fmt: skip
def test_target_errors(mix, field, message):
    only_sentiment = Calibration({S: CAL.curves[S]})
    layout_cal = only_sentiment if "humor" not in str(mix) else CAL
    with pytest.raises(MixError) as info:
        resolve_steering(mix, LAYOUT, calibration=layout_cal, max_tokens=8)
    assert info.value.field == field
    assert message in info.value.message


def test_targets_in_a_schedule():
    mix = {"schedule": [{"until": 2, "mix": {"target": {S: -0.5}}}, {"mix": {"target": {S: 0.5}}}]}
    got = resolve_steering(mix, LAYOUT, calibration=CAL, max_tokens=8)
    assert got.pieces == ((2, (0.0, 0.0, 1.0, 0.0)), (None, (1.0, 0.0, 0.0, 0.0)))


@pytest.mark.parametrize("mix", [
    {"alpha": {S: 0.8, F: 0.2}},
    {"schedule": [{"until": 4, "mix": {"alpha": {S: 1}}}, {"mix": {"target": {S: 0.25}}}]},
    {"ramp": {"from": {"alpha": {S: 0}}, "to": {"anchors": {FORMAL: 1}}, "over": 10}},
])  # fmt: skip
def test_the_json_form_round_trips_to_the_same_mix_at_every_token(mix):
    import json

    got = resolve_steering(mix, LAYOUT, calibration=CAL, max_tokens=16)
    back = ResolvedMix.from_json(json.loads(json.dumps(got.report)))
    assert back == got and back.report == got.report
    assert [back.at(i) for i in range(20)] == [got.at(i) for i in range(20)]


def test_a_resolved_mix_is_either_pieces_ending_open_or_a_ramp():
    with pytest.raises(ValueError, match="either pieces"):
        ResolvedMix(((4, (1.0,)),))
    with pytest.raises(ValueError, match="either pieces"):
        ResolvedMix(((None, (1.0,)),), ramp=((1.0,), (0.0,), 2))
    assert ResolvedMix.constant((0.5, 0.5)).at(99) == (0.5, 0.5)

"""Table-driven tests of lerpray.mixing: every rule of the mix spec and the field + message of every error.

Expected coefficients are worked out by hand from c[high] = lambda * alpha, c[low] = lambda * (1 - alpha).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from lerpray.mixing import AnchorLayout, ExtrapolationBounds, MixError, default_mix, mix_key, resolve_mix

pytestmark = pytest.mark.unit

# Coefficient order deliberately interleaves the attributes, so a wrong index shows up.
POS, FORMAL, NEG, INFORMAL = "sentiment.positive", "formality.formal", "sentiment.negative", "formality.informal"
LAYOUT = AnchorLayout(
    anchors=(POS, FORMAL, NEG, INFORMAL),
    attributes={"sentiment": (NEG, POS), "formality": (INFORMAL, FORMAL)},
)
DEFAULT = ExtrapolationBounds()
NARROW = ExtrapolationBounds(alpha_min=-0.5, alpha_max=1.5, weight_min=-0.5, weight_max=1.5)
S, F = "sentiment", "formality"

VALID = [
    # id, mix, bounds, expected (POS, FORMAL, NEG, INFORMAL)
    ("paper-example", {"alpha": {S: 0.8, F: 0.2}, "lambda": {S: 0.5, F: 0.5}}, DEFAULT, (0.4, 0.1, 0.1, 0.4)),
    ("lambda-defaults-uniform", {"alpha": {S: 1.0, F: 0.0}}, DEFAULT, (0.5, 0.0, 0.0, 0.5)),
    ("one-attribute", {"alpha": {S: 0.25}}, DEFAULT, (0.25, 0.0, 0.75, 0.0)),
    ("unnamed-lambda-is-0", {"alpha": {S: 0.3, F: 0.9}, "lambda": {S: 1.0}}, DEFAULT, (0.3, 0.0, 0.7, 0.0)),
    ("explicit-lambda-0", {"alpha": {S: 0.3, F: 0.9}, "lambda": {S: 1, F: 0}}, DEFAULT, (0.3, 0.0, 0.7, 0.0)),
    ("int-values", {"alpha": {S: 1, F: 0}, "lambda": {S: 0.25, F: 0.75}}, DEFAULT, (0.25, 0.0, 0.0, 0.75)),
    ("raw", {"anchors": {POS: 0.7, NEG: 0.3}}, DEFAULT, (0.7, 0.0, 0.3, 0.0)),
    ("raw-single", {"anchors": {FORMAL: 1}}, DEFAULT, (0.0, 1.0, 0.0, 0.0)),
    ("extrapolate-false", {"alpha": {S: 0.25}, "extrapolate": False}, DEFAULT, (0.25, 0.0, 0.75, 0.0)),
    ("extrapolate-convex", {"alpha": {S: 0.25}, "extrapolate": True}, DEFAULT, (0.25, 0.0, 0.75, 0.0)),
    ("alpha-2", {"alpha": {S: 2}, "extrapolate": True}, DEFAULT, (2.0, 0.0, -1.0, 0.0)),
    ("alpha-minus-1", {"alpha": {S: -1, F: 0.5}, "extrapolate": True}, DEFAULT, (-0.5, 0.25, 1.0, 0.25)),
    ("twin-anchors-cancel", {"anchors": {POS: 1, NEG: -1}, "extrapolate": True}, DEFAULT, (1.0, 0.0, -1.0, 0.0)),
    ("raw-no-sum-rule", {"anchors": {POS: 2, FORMAL: 2, INFORMAL: -1}, "extrapolate": True}, DEFAULT, (2, 2, 0, -1)),
    ("raw-all-zero-is-base", {"anchors": {POS: 0}, "extrapolate": True}, DEFAULT, (0.0, 0.0, 0.0, 0.0)),
    ("narrow-bounds-edge", {"alpha": {S: 1.5}, "extrapolate": True}, NARROW, (1.5, 0.0, -0.5, 0.0)),
    ("no-extrapolation-server", {"alpha": {S: 0.25}}, None, (0.25, 0.0, 0.75, 0.0)),
    ("negative-zero", {"anchors": {POS: -0.0, FORMAL: 1}}, DEFAULT, (0.0, 1.0, 0.0, 0.0)),
    ("negative-zero-alpha", {"alpha": {S: -0.0}}, DEFAULT, (0.0, 0.0, 1.0, 0.0)),
]


@pytest.mark.parametrize(("mix", "bounds", "expected"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_mixes_give_hand_computed_coefficients(mix, bounds, expected):
    coeffs = resolve_mix(mix, LAYOUT, bounds)
    assert isinstance(coeffs, tuple) and all(type(c) is float for c in coeffs)
    assert coeffs == pytest.approx(expected, abs=1e-12)
    assert all(math.copysign(1.0, c) == 1.0 for c in coeffs if c == 0.0)  # no -0.0 leaks into cache keys


NAN, INF = float("nan"), float("inf")
NOT_ALLOWED = "this server does not allow extrapolation"
LAM, LAM_S, LAM_F = "interpolation.lambda", "interpolation.lambda.sentiment", "interpolation.lambda.formality"
HALF = {"alpha": {S: 0.5, F: 0.5}}
# fmt: off
ERRORS = [
    # id, mix, bounds, field, substrings of the message
    ("none", None, DEFAULT, "interpolation", ["must be an object", "got null"]),
    ("list", [], DEFAULT, "interpolation", ["got array"]),
    ("string", "alpha", DEFAULT, "interpolation", ["got string"]),
    ("number", 3, DEFAULT, "interpolation", ["got number"]),
    ("empty", {}, DEFAULT, "interpolation", ["is empty", '"alpha"', '"anchors"']),
    ("only-extrapolate", {"extrapolate": True}, DEFAULT, "interpolation", ["is empty"]),
    ("unknown-key", {"foo": 1}, DEFAULT, "interpolation.foo", ["allowed keys: alpha, lambda, anchors, extrapolate"]),
    ("key-case", {"Alpha": {S: 0.5}}, DEFAULT, "interpolation.Alpha", ["unknown key"]),
    ("non-string-key", {1: 0.5}, DEFAULT, "interpolation.<number key>", ["unknown key"]),
    ("both-forms", {"alpha": {S: 0.5}, "anchors": {POS: 1}}, DEFAULT, "interpolation", ["not both"]),
    ("lambda-and-anchors", {"lambda": {S: 1}, "anchors": {POS: 1}}, DEFAULT, "interpolation", ["not both"]),
    ("lambda-without-alpha", {"lambda": {S: 1}}, DEFAULT, "interpolation.alpha", ['required with "lambda"']),
    ("alpha-empty", {"alpha": {}}, DEFAULT, "interpolation.alpha", ["non-empty object", "got an empty object"]),
    ("alpha-list", {"alpha": [0.5]}, DEFAULT, "interpolation.alpha", ["got array", '{"sentiment": 0.5}']),
    ("alpha-number", {"alpha": 0.5}, DEFAULT, "interpolation.alpha", ["got number"]),
    ("alpha-null", {"alpha": None}, DEFAULT, "interpolation.alpha", ["got null"]),
    ("alpha-unknown", {"alpha": {"colour": 0.5}}, DEFAULT, "interpolation.alpha.colour",
     ["unknown attribute", "this anchor set has: sentiment, formality"]),
    ("alpha-anchor-name", {"alpha": {POS: 0.5}}, DEFAULT, f"interpolation.alpha.{POS}", ["unknown attribute"]),
    ("alpha-nan", {"alpha": {S: NAN}}, DEFAULT, "interpolation.alpha.sentiment", ["finite number", "NaN"]),
    ("alpha-inf", {"alpha": {S: INF}}, DEFAULT, "interpolation.alpha.sentiment", ["finite number", "infinity"]),
    ("alpha-minus-inf", {"alpha": {S: -INF}}, DEFAULT, "interpolation.alpha.sentiment", ["finite number"]),
    ("alpha-huge-int", {"alpha": {S: 10**400}}, DEFAULT, "interpolation.alpha.sentiment", ["too large"]),
    ("alpha-true", {"alpha": {S: True}}, DEFAULT, "interpolation.alpha.sentiment", ["got boolean"]),
    ("alpha-false", {"alpha": {S: False}}, DEFAULT, "interpolation.alpha.sentiment", ["got boolean"]),
    ("alpha-str", {"alpha": {S: "0.5"}}, DEFAULT, "interpolation.alpha.sentiment", ["got string"]),
    ("alpha-null-value", {"alpha": {S: None}}, DEFAULT, "interpolation.alpha.sentiment", ["got null"]),
    ("alpha-nested", {"alpha": {S: {"v": 0.5}}}, DEFAULT, "interpolation.alpha.sentiment", ["got object"]),
    ("alpha-list-value", {"alpha": {S: [0.5]}}, DEFAULT, "interpolation.alpha.sentiment", ["got array"]),
    ("alpha-above-1", {"alpha": {S: 1.5}}, DEFAULT, "interpolation.alpha.sentiment",
     ["must be in [0, 1] (got 1.5)", 'set "extrapolate": true to allow [-1, 2]']),
    ("alpha-below-0", {"alpha": {S: -0.1}}, DEFAULT, "interpolation.alpha.sentiment", ["(got -0.1)"]),
    ("alpha-above-1-no-server", {"alpha": {S: 1.5}}, None, "interpolation.alpha.sentiment", [NOT_ALLOWED]),
    ("alpha-above-bounds", {"alpha": {S: 2.5}, "extrapolate": True}, DEFAULT, "interpolation.alpha.sentiment",
     ["must be in [-1, 2] (got 2.5)", "extrapolation range"]),
    ("alpha-below-bounds", {"alpha": {S: -1.01}, "extrapolate": True}, DEFAULT, "interpolation.alpha.sentiment",
     ["must be in [-1, 2] (got -1.01)"]),
    ("alpha-narrow-bounds", {"alpha": {F: 1.6}, "extrapolate": True}, NARROW, "interpolation.alpha.formality",
     ["must be in [-0.5, 1.5]"]),
    ("narrow-hint", {"alpha": {F: 1.6}}, NARROW, "interpolation.alpha.formality", ["to allow [-0.5, 1.5]"]),
    ("extrapolate-no-server", {"alpha": {S: 0.5}, "extrapolate": True}, None, "interpolation.extrapolate",
     [NOT_ALLOWED]),
    ("extrapolate-string", {"alpha": {S: 0.5}, "extrapolate": "yes"}, DEFAULT, "interpolation.extrapolate",
     ["true or false", "got string"]),
    ("extrapolate-1", {"alpha": {S: 0.5}, "extrapolate": 1}, DEFAULT, "interpolation.extrapolate", ["got number"]),
    ("extrapolate-null", {"alpha": {S: 0.5}, "extrapolate": None}, DEFAULT, "interpolation.extrapolate", ["got null"]),
    ("lambda-sum-low", {**HALF, "lambda": {S: 0.4, F: 0.3}}, DEFAULT, LAM,
     ["must sum to 1 (got 0.7)", "scale them", "lambda stays on the simplex", "extrapolate alpha instead"]),
    ("lambda-sum-high", {**HALF, "lambda": {S: 0.8, F: 0.5}}, DEFAULT, LAM, ["(got 1.3)"]),
    ("lambda-sum-extrapolating", {"alpha": {S: 2}, "lambda": {S: 0.7}, "extrapolate": True}, DEFAULT, LAM,
     ["must sum to 1 (got 0.7)"]),
    ("lambda-negative", {**HALF, "lambda": {S: -0.2, F: 1.2}}, DEFAULT, LAM_S,
     ["must be in [0, 1] (got -0.2)", "lambda stays on the simplex"]),
    ("lambda-above-1-extrapolating", {**HALF, "lambda": {S: 1.2, F: -0.2}, "extrapolate": True}, DEFAULT, LAM_S,
     ["(got 1.2)"]),
    ("lambda-huge", {**HALF, "lambda": {S: 1e308, F: 1e308}}, DEFAULT, LAM_S, ["must be in [0, 1]"]),
    ("lambda-without-its-alpha", {"alpha": {S: 0.5}, "lambda": {S: 0.5, F: 0.5}}, DEFAULT, LAM_F,
     ["no alpha", "add interpolation.alpha.formality", "remove it from lambda"]),
    ("lambda-empty", {"alpha": {S: 0.5}, "lambda": {}}, DEFAULT, "interpolation.lambda", ["non-empty object"]),
    ("lambda-unknown", {"alpha": {S: 0.5}, "lambda": {"colour": 1}}, DEFAULT, "interpolation.lambda.colour",
     ["unknown attribute"]),
    ("lambda-nan", {"alpha": {S: 0.5}, "lambda": {S: NAN}}, DEFAULT, "interpolation.lambda.sentiment",
     ["finite number"]),
    ("lambda-off-by-2e-6", {**HALF, "lambda": {S: 0.5 + 2e-6, F: 0.5}}, DEFAULT, LAM, ["must sum to 1"]),
    ("anchors-empty", {"anchors": {}}, DEFAULT, "interpolation.anchors", ["non-empty object", f'{{"{POS}": 0.5}}']),
    ("anchors-string", {"anchors": "x"}, DEFAULT, "interpolation.anchors", ["got string"]),
    ("anchors-unknown", {"anchors": {"sentiment.neutral": 1}}, DEFAULT, "interpolation.anchors.sentiment.neutral",
     ["unknown anchor", f"this anchor set has: {POS}, {FORMAL}, {NEG}, {INFORMAL}"]),
    ("anchors-attribute-name", {"anchors": {S: 1}}, DEFAULT, "interpolation.anchors.sentiment", ["unknown anchor"]),
    ("anchors-sum", {"anchors": {POS: 0.4, NEG: 0.3}}, DEFAULT, "interpolation.anchors",
     ["must sum to 1 (got 0.7)", 'or set "extrapolate": true to drop this constraint']),
    ("anchors-above-1", {"anchors": {POS: 1.5, NEG: -0.5}}, DEFAULT, f"interpolation.anchors.{POS}",
     ["must be in [0, 1] (got 1.5)", 'set "extrapolate": true to allow [-1, 2]']),
    ("anchors-negative", {"anchors": {NEG: -0.5, POS: 1.5}}, DEFAULT, f"interpolation.anchors.{NEG}", ["(got -0.5)"]),
    ("anchors-negative-no-server", {"anchors": {NEG: -0.5}}, None, f"interpolation.anchors.{NEG}", [NOT_ALLOWED]),
    ("anchors-above-bounds", {"anchors": {POS: 2.5}, "extrapolate": True}, DEFAULT, f"interpolation.anchors.{POS}",
     ["must be in [-1, 2] (got 2.5)"]),
    ("anchors-below-narrow", {"anchors": {POS: -0.6}, "extrapolate": True}, NARROW, f"interpolation.anchors.{POS}",
     ["must be in [-0.5, 1.5]"]),
    ("anchors-bool", {"anchors": {POS: True}}, DEFAULT, f"interpolation.anchors.{POS}", ["got boolean"]),
    ("long-key-shortened", {"alpha": {"x" * 200: 0.5}}, DEFAULT, "interpolation.alpha." + "x" * 61 + "...",
     ["unknown attribute"]),
]
# fmt: on


@pytest.mark.parametrize(("mix", "bounds", "field", "parts"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_invalid_mixes_raise_mix_error_naming_the_field(mix, bounds, field, parts):
    with pytest.raises(MixError) as info:
        resolve_mix(mix, LAYOUT, bounds)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == field
    for part in parts:
        assert part in err.message
    assert str(err) == f"{field}: {err.message}"


def test_convex_sum_hint_omits_extrapolation_when_the_server_forbids_it():
    with pytest.raises(MixError) as info:
        resolve_mix({"anchors": {POS: 0.4, NEG: 0.3}}, LAYOUT, None)
    assert info.value.field == "interpolation.anchors"
    assert "extrapolate" not in info.value.message


OFF = 1.0 + 4e-7  # inside the 1e-6 sum tolerance


@pytest.mark.parametrize(
    "mix",
    [
        {"alpha": {S: 0.3, F: 0.6}, "lambda": {S: 0.5 * OFF, F: 0.5 * OFF}},
        {"anchors": {POS: 0.5 * OFF, NEG: 0.5 * OFF}},
    ],
    ids=["lambda", "anchors"],
)
def test_sums_within_tolerance_are_renormalised_exactly(mix):
    assert math.fsum(resolve_mix(mix, LAYOUT)) == pytest.approx(1.0, abs=1e-15)


def test_resolve_mix_does_not_mutate_the_request():
    mix = {"alpha": {S: 0.8}, "lambda": {S: 1.0}, "extrapolate": False}
    before = repr(mix)
    resolve_mix(mix, LAYOUT)
    assert repr(mix) == before


def test_default_mix_is_the_centre_of_the_hull():
    mix = default_mix(LAYOUT)
    assert mix == {"alpha": {S: 0.5, F: 0.5}, "lambda": {S: 0.5, F: 0.5}}
    assert resolve_mix(mix, LAYOUT) == pytest.approx((0.25, 0.25, 0.25, 0.25))
    three = AnchorLayout(("a.hi", "a.lo", "b.hi", "b.lo", "c.hi", "c.lo"), {k: (f"{k}.lo", f"{k}.hi") for k in "abc"})
    assert resolve_mix(default_mix(three), three) == pytest.approx((1 / 6,) * 6, abs=1e-12)


def test_default_mix_without_attributes_is_uniform_over_anchors():
    layout = AnchorLayout(("x", "y"), {})
    assert default_mix(layout) == {"anchors": {"x": 0.5, "y": 0.5}}
    assert resolve_mix(default_mix(layout), layout) == (0.5, 0.5)


def test_mix_key_quantises_and_is_hashable():
    a = mix_key((0.1234564, -0.0, 1.0))
    b = mix_key([0.12345641, 0.0000001, 1])
    assert a == b == (0.123456, 0.0, 1.0)
    assert hash(a) == hash(b)
    assert math.copysign(1.0, a[1]) == 1.0
    assert mix_key((0.1234564,), decimals=2) == (0.12,)
    assert mix_key((0.1,)) != mix_key((0.100002,))


@pytest.mark.parametrize(
    ("anchors", "attributes", "needle"),
    [
        ((), {}, "at least one anchor"),
        (("a", "a"), {}, "unique"),
        (("a", "b"), {"x": ("a", "c")}, "'x'"),
        (("a", "b"), {"x": ("a", "a")}, "two distinct anchors"),
    ],
)
def test_anchor_layout_rejects_inconsistent_layouts(anchors, attributes, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        AnchorLayout(anchors, attributes)


@pytest.mark.parametrize(
    "kwargs",
    [{"alpha_min": 0.1}, {"alpha_max": 0.9}, {"weight_min": float("-inf")}, {"weight_max": float("nan")}],
)
def test_extrapolation_bounds_must_be_finite_and_contain_the_hull(kwargs):
    with pytest.raises(ValueError, match=r"contain \[0, 1\]"):
        ExtrapolationBounds(**kwargs)


def test_module_is_pure_python():
    code = "import sys, lerpray.mixing; sys.exit(sorted({'torch', 'ray', 'numpy'} & set(sys.modules)) != [])"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

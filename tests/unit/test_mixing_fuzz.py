"""Property tests of lerpray.mixing with hypothesis.

1. Arbitrary JSON-like input never raises anything but MixError, and whatever is accepted is a finite vector.
2. Structured mixes (right shape, any numbers) are accepted exactly when an independent statement of the rules says
   so, and accepted ones equal the loop-form reference: convex ones are non-negative and sum to 1, extrapolating
   ones stay inside the operator's bounds.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lerpray.mixing import AnchorLayout, ExtrapolationBounds, MixError, resolve_mix

pytestmark = pytest.mark.unit

LAYOUT = AnchorLayout(
    anchors=("tone.warm", "length.long", "tone.cold", "length.short", "extra.solo"),
    attributes={"tone": ("tone.cold", "tone.warm"), "length": ("length.short", "length.long")},
)
ATTRS, ANCHORS = list(LAYOUT.attributes), list(LAYOUT.anchors)
BOUNDS = st.sampled_from([ExtrapolationBounds(), ExtrapolationBounds(-0.25, 1.5, -3.0, 4.0), None])
FUZZ = settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
PROPS = settings(max_examples=200, deadline=None, database=None)

ODD = ["", "é\u0301", "\U0001f600", "\ud800", "\x00", "\u202etone", "tone ", "TONE", "tone.warm\n"]
NAMES = st.sampled_from(["alpha", "lambda", "anchors", "extrapolate", *ATTRS, *ANCHORS, *ODD])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**1024, 1e308, -1e-320, 5e-324, -0.0])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(-3, 3)
    | st.text(max_size=8)
    | st.sampled_from(ODD)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NAMES | st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
TOP = st.dictionaries(NAMES | st.text(max_size=4), JSON | st.dictionaries(NAMES, SCALARS, max_size=5), max_size=4)


@FUZZ
@given(mix=JSON | TOP, bounds=BOUNDS)
def test_arbitrary_json_only_ever_raises_mix_error(mix, bounds):
    try:
        coeffs = resolve_mix(mix, LAYOUT, bounds)
    except MixError as err:
        assert err.field.startswith("interpolation") and err.message
        return
    assert len(coeffs) == len(ANCHORS) and all(type(c) is float and math.isfinite(c) for c in coeffs)
    if not mix.get("extrapolate"):
        assert all(c >= 0.0 for c in coeffs) and abs(math.fsum(coeffs) - 1.0) <= 1e-9


def test_deeply_nested_values_are_rejected_without_recursion():
    deep: object = 0.5
    for _ in range(50_000):
        deep = [deep]
    for mix in ({"alpha": {"tone": deep}}, {"anchors": deep}, deep):
        with pytest.raises(MixError):
            resolve_mix(mix, LAYOUT)


# Numbers a client might send: in range, just outside, far outside, non-finite, bool, the wrong type.
NUMBERS = (
    st.floats(-0.1, 1.1)
    | st.floats(-4, 5)
    | st.sampled_from([0, 1, 0.0, 1.0, 2, -1, 0.5, True, float("nan"), float("inf"), "0.5", None])
)


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _near_simplex(values: list[float]) -> bool:
    return all(0.0 <= v <= 1.0 for v in values) and abs(math.fsum(values) - 1.0) <= 1e-6


@st.composite
def weight_dicts(draw, keys: list[str]) -> dict:
    """Weights keyed by ``keys``, often pushed onto (or just off) the simplex so the sum rules get exercised."""
    weights = draw(st.dictionaries(st.sampled_from(keys), st.floats(0, 1) | NUMBERS, min_size=1))
    if not all(_finite(v) for v in weights.values()):
        return weights
    mode = draw(st.sampled_from(["as-drawn", "fill-last", "normalise", "normalise"]))
    if mode == "fill-last":  # sums to 1, but the last value may be negative or above 1
        *rest, last = weights
        weights[last] = 1.0 - math.fsum(weights[k] for k in rest)
    total = math.fsum(abs(v) for v in weights.values())
    if mode == "normalise" and total > 0:
        nudge = draw(st.sampled_from([0.0, 5e-7, -5e-7, 2e-6, -2e-6, 1e-4]))  # around the 1e-6 tolerance
        weights = {k: abs(v) / total * (1.0 + nudge) for k, v in weights.items()}
    return weights


EXTRAPOLATE = st.sampled_from([{}, {"extrapolate": False}, {"extrapolate": True}])


@st.composite
def attribute_mixes(draw) -> dict:
    alpha = draw(st.dictionaries(st.sampled_from(ATTRS), NUMBERS, min_size=1))
    lam_keys = ATTRS if draw(st.booleans()) else list(alpha)  # sometimes names an attribute alpha does not
    lam = draw(st.none() | weight_dicts(lam_keys))
    return {"alpha": alpha, **({} if lam is None else {"lambda": lam}), **draw(EXTRAPOLATE)}


@st.composite
def anchor_mixes(draw) -> dict:
    return {"anchors": draw(weight_dicts(ANCHORS)), **draw(EXTRAPOLATE)}


def _range(bounds: ExtrapolationBounds | None, extrapolate: bool, kind: str) -> tuple[float, float]:
    if extrapolate and bounds is not None:
        return getattr(bounds, f"{kind}_min"), getattr(bounds, f"{kind}_max")
    return 0.0, 1.0


def _attribute_rules_hold(mix: dict, bounds: ExtrapolationBounds | None) -> bool:
    extrapolate = mix.get("extrapolate", False)
    lo, hi = _range(bounds, extrapolate, "alpha")
    alpha, lam = mix["alpha"], mix.get("lambda")
    if (extrapolate and bounds is None) or not all(_finite(a) and lo <= a <= hi for a in alpha.values()):
        return False
    if lam is None:
        return True
    return set(lam) <= set(alpha) and all(_finite(v) for v in lam.values()) and _near_simplex(list(lam.values()))


def _reference(mix: dict) -> list[float]:
    """The loop form from the module docstring, with lambda renormalised onto the simplex."""
    alpha = mix["alpha"]
    lam = mix.get("lambda") or {a: 1.0 for a in alpha}
    total = math.fsum(lam.values())
    coeffs = [0.0] * len(ANCHORS)
    for attr, a in alpha.items():
        low, high = LAYOUT.attributes[attr]
        coeffs[ANCHORS.index(high)] += lam.get(attr, 0.0) / total * a
        coeffs[ANCHORS.index(low)] += lam.get(attr, 0.0) / total * (1 - a)
    return coeffs


@PROPS
@given(mix=attribute_mixes(), bounds=BOUNDS)
def test_attribute_mixes_follow_the_rules_and_the_formula(mix, bounds):
    try:
        coeffs = resolve_mix(mix, LAYOUT, bounds)
    except MixError:
        assert not _attribute_rules_hold(mix, bounds)
        return
    assert _attribute_rules_hold(mix, bounds)
    assert coeffs == pytest.approx(_reference(mix), abs=1e-12)
    assert abs(math.fsum(coeffs) - 1.0) <= 1e-9  # lambda stays on the simplex, even when extrapolating
    if mix.get("extrapolate"):
        assert bounds is not None
        worst_low, worst_high = min(bounds.alpha_min, 1 - bounds.alpha_max), max(bounds.alpha_max, 1 - bounds.alpha_min)
        assert all(worst_low - 1e-12 <= c <= worst_high + 1e-12 for c in coeffs)
    else:
        assert all(c >= 0.0 for c in coeffs)


@PROPS
@given(mix=anchor_mixes(), bounds=BOUNDS)
def test_anchor_mixes_follow_the_rules(mix, bounds):
    weights, extrapolate = mix["anchors"], mix.get("extrapolate", False)
    lo, hi = _range(bounds, extrapolate, "weight")
    allowed = not (extrapolate and bounds is None) and all(_finite(w) and lo <= w <= hi for w in weights.values())
    allowed = allowed and (extrapolate or _near_simplex(list(weights.values())))
    try:
        coeffs = resolve_mix(mix, LAYOUT, bounds)
    except MixError:
        assert not allowed
        return
    assert allowed
    if extrapolate:  # raw weights pass through unchanged, inside the operator's bounds
        assert list(coeffs) == [float(weights.get(name, 0.0)) for name in ANCHORS]
        assert all(lo <= c <= hi for c in coeffs)
    else:
        assert all(c >= 0.0 for c in coeffs) and abs(math.fsum(coeffs) - 1.0) <= 1e-9
        total = math.fsum(weights.values())
        assert coeffs == pytest.approx([weights.get(name, 0.0) / total for name in ANCHORS], abs=1e-12)

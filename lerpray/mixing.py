"""Mix specification (the request's ``interpolation`` JSON) -> coefficient vector ``c`` [K].

A mix comes in one of two forms (never both):

* per attribute, the paper's parametrisation (Kangaslahti & Alvarez-Melis, arXiv 2404.07117)::

      {"alpha": {"sentiment": 0.8, "formality": 0.2}, "lambda": {"sentiment": 0.5, "formality": 0.5}}

      c[high anchor of i] = lambda_i * alpha_i        c[low anchor of i] = lambda_i * (1 - alpha_i)

  ``lambda`` defaults to uniform over the attributes named in ``alpha``; attributes not named get lambda 0.
  An attribute named in ``lambda`` must also be named in ``alpha`` (alpha has no silent default).
* raw anchor weights: ``{"anchors": {"sentiment.positive": 0.7, "sentiment.negative": 0.3}}``; unnamed anchors get 0.

Loop form of what :func:`resolve_mix` returns::

    c = [0.0] * len(layout.anchors)                        # lam[attr] is 0 for attributes lambda omits
    for attr, a in alpha.items():                          # per-attribute form
        low, high = layout.attributes[attr]
        c[index(high)] += lam[attr] * a
        c[index(low)] += lam[attr] * (1 - a)
    for name, w in anchors.items():                        # raw form
        c[index(name)] = w

Policy: by default a mix stays in the anchors' convex hull: lambda >= 0 summing to 1, alpha in [0, 1], raw weights
>= 0 summing to 1 (sums within 1e-6, then renormalised so the coefficients sum to 1 exactly up to rounding).
``"extrapolate": true`` widens alpha to [alpha_min, alpha_max] and raw weights to [weight_min, weight_max] with no
sum constraint, but only if the operator allows it (``bounds`` not None). Lambda stays on the simplex always: the
paper extrapolates alpha, not the attribute weights.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "AnchorLayout", "ExtrapolationBounds", "MixError", "default_mix", "finite_float", "json_type", "mix_key", "named_numbers",
    "report_mix", "resolve_mix",
]

FIELD = "interpolation"
SUM_TOLERANCE = 1e-6
_TOP_KEYS = ("alpha", "lambda", "anchors", "extrapolate")
MIX_KEYS = (*_TOP_KEYS, "target", "schedule", "ramp")  # every key an `interpolation` object may have (steering.py)
_LAMBDA_RULE = 'lambda stays on the simplex even with "extrapolate": true (extrapolate alpha instead)'


class MixError(ValueError):
    """A mix the caller must change; ``field`` is the dotted JSON path, ``message`` says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class AnchorLayout:
    anchors: tuple[str, ...]  # coefficient order
    attributes: dict[str, tuple[str, str]]  # attribute -> (low anchor name, high anchor name)

    def __post_init__(self) -> None:
        if not self.anchors or len(set(self.anchors)) != len(self.anchors):
            raise ValueError(f"anchor layout needs at least one anchor and unique names, got {self.anchors}")
        for attr, (low, high) in self.attributes.items():
            if low == high or low not in self.anchors or high not in self.anchors:
                raise ValueError(f"attribute {attr!r} needs two distinct anchors of the layout, got {(low, high)}")


@dataclass(frozen=True)
class ExtrapolationBounds:
    """Operator policy for ``"extrapolate": true``; the paper calls alpha in [-1, 2] the stable range."""

    alpha_min: float = -1.0
    alpha_max: float = 2.0
    weight_min: float = -1.0
    weight_max: float = 2.0

    def __post_init__(self) -> None:
        for name, lo, hi in (("alpha", self.alpha_min, self.alpha_max), ("weight", self.weight_min, self.weight_max)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= 0.0 and hi >= 1.0):
                raise ValueError(f"{name} bounds must be finite and contain [0, 1], got [{lo}, {hi}]")


def resolve_mix(
    mix: object, layout: AnchorLayout, bounds: ExtrapolationBounds | None = ExtrapolationBounds()
) -> tuple[float, ...]:
    """Validate ``mix`` against ``layout`` and the extrapolation policy; return ``c`` [len(layout.anchors)].

    Raises MixError naming the offending field. ``bounds=None`` means the server does not allow extrapolation.
    """
    if not isinstance(mix, Mapping):
        example = '{"alpha": {...}} or {"anchors": {...}}'
        raise MixError(FIELD, f"must be an object such as {example} (got {json_type(mix)})")
    unknown = [k for k in mix if k not in _TOP_KEYS]
    if unknown:
        raise MixError(_path(FIELD, unknown[0]), f"unknown key; allowed keys: {', '.join(_TOP_KEYS)}")
    extrapolate = _extrapolate_flag(mix, bounds)
    has_attribute_form = "alpha" in mix or "lambda" in mix
    if has_attribute_form and "anchors" in mix:
        raise MixError(FIELD, 'give either "alpha" (with optional "lambda") or "anchors", not both')
    if "anchors" in mix:
        coeffs = _raw_coeffs(mix["anchors"], layout, bounds, extrapolate)
    elif has_attribute_form:
        coeffs = _attribute_coeffs(mix, layout, bounds, extrapolate)
    else:
        raise MixError(FIELD, 'is empty; give "alpha" (with optional "lambda") or "anchors"')
    return tuple(c + 0.0 for c in coeffs)  # + 0.0 turns -0.0 into 0.0


def default_mix(layout: AnchorLayout) -> dict[str, dict[str, float]]:
    """The centre of the hull: alpha 0.5 on every attribute, uniform lambda (uniform raw weights if no attributes)."""
    if not layout.attributes:
        return {"anchors": {name: 1.0 / len(layout.anchors) for name in layout.anchors}}
    n = len(layout.attributes)
    return {"alpha": {a: 0.5 for a in layout.attributes}, "lambda": {a: 1.0 / n for a in layout.attributes}}


def report_mix(mix: Mapping) -> dict:
    """A mix `resolve_mix` accepted, as replies report it: alphas with their normalised lambdas, or raw weights."""
    if "anchors" in mix:
        out: dict = {"anchors": {k: float(v) for k, v in mix["anchors"].items()}}
    else:
        alpha = {k: float(v) for k, v in mix["alpha"].items()}
        lam = {k: float(v) for k, v in mix["lambda"].items()} if "lambda" in mix else {a: 1.0 for a in alpha}
        total = math.fsum(lam.values())
        out = {"alpha": alpha, "lambda": {a: round(w / total, 12) for a, w in lam.items()}}
    return {**out, "extrapolate": True} if mix.get("extrapolate") is True else out


def mix_key(coeffs: Sequence[float], decimals: int = 6) -> tuple[float, ...]:
    """Quantised, hashable cache key: mixes that agree to ``decimals`` places share merged weights."""
    return tuple(round(float(c), decimals) + 0.0 for c in coeffs)


def _extrapolate_flag(mix: Mapping, bounds: ExtrapolationBounds | None) -> bool:
    flag = mix.get("extrapolate", False)
    if not isinstance(flag, bool):
        raise MixError(f"{FIELD}.extrapolate", f"must be true or false (got {json_type(flag)})")
    if flag and bounds is None:
        raise MixError(f"{FIELD}.extrapolate", "this server does not allow extrapolation; remove it")
    return flag


def _attribute_coeffs(
    mix: Mapping, layout: AnchorLayout, bounds: ExtrapolationBounds | None, extrapolate: bool
) -> list[float]:
    if "alpha" not in mix:
        raise MixError(f"{FIELD}.alpha", 'is required with "lambda": give an alpha for every attribute in lambda')
    alpha = named_numbers(mix["alpha"], f"{FIELD}.alpha", list(layout.attributes), "attribute")
    wide = None if bounds is None else (bounds.alpha_min, bounds.alpha_max)
    for attr, a in alpha.items():
        _check_range(a, f"{FIELD}.alpha.{attr}", wide, extrapolate)
    lam = _lambdas(mix, alpha, list(layout.attributes))
    coeffs = [0.0] * len(layout.anchors)
    for attr, a in alpha.items():
        low, high = layout.attributes[attr]
        coeffs[layout.anchors.index(high)] += lam.get(attr, 0.0) * a
        coeffs[layout.anchors.index(low)] += lam.get(attr, 0.0) * (1.0 - a)
    return coeffs


def _lambdas(mix: Mapping, alpha: dict[str, float], names: list[str]) -> dict[str, float]:
    if "lambda" not in mix:
        return {attr: 1.0 / len(alpha) for attr in alpha}
    lam = named_numbers(mix["lambda"], f"{FIELD}.lambda", names, "attribute")
    for attr, value in lam.items():
        field = f"{FIELD}.lambda.{attr}"
        if attr not in alpha:
            raise MixError(field, f"has a weight but no alpha; add {FIELD}.alpha.{attr} or remove it from lambda")
        if not 0.0 <= value <= 1.0:
            raise MixError(field, f"must be in [0, 1] (got {value:.10g}); {_LAMBDA_RULE}")
    return _normalised(lam, f"{FIELD}.lambda", f"scale them so they do; {_LAMBDA_RULE}")


def _raw_coeffs(
    value: object, layout: AnchorLayout, bounds: ExtrapolationBounds | None, extrapolate: bool
) -> list[float]:
    weights = named_numbers(value, f"{FIELD}.anchors", list(layout.anchors), "anchor")
    wide = None if bounds is None else (bounds.weight_min, bounds.weight_max)
    for name, w in weights.items():
        _check_range(w, f"{FIELD}.anchors.{name}", wide, extrapolate)
    if not extrapolate:  # extrapolating raw weights have no sum constraint
        fix = "scale them so they do" + (', or set "extrapolate": true to drop this constraint' if wide else "")
        weights = _normalised(weights, f"{FIELD}.anchors", fix)
    return [weights.get(name, 0.0) for name in layout.anchors]


def _check_range(value: float, field: str, wide: tuple[float, float] | None, extrapolate: bool) -> None:
    """In [0, 1], or in the server's ``wide`` range when the mix extrapolates (``wide`` None: not allowed)."""
    lo, hi = wide if extrapolate and wide else (0.0, 1.0)
    if not lo <= value <= hi:
        if extrapolate:
            rule = "that is the server's extrapolation range"
        elif wide:
            rule = f'set "extrapolate": true to allow [{wide[0]:g}, {wide[1]:g}]'
        else:
            rule = "this server does not allow extrapolation"
        raise MixError(field, f"must be in [{lo:g}, {hi:g}] (got {value:.10g}); {rule}")


def named_numbers(value: object, field: str, allowed: list[str], what: str) -> dict[str, float]:
    """A non-empty JSON object of finite numbers keyed by allowed names -> {name: float}."""
    if not isinstance(value, Mapping) or not value:
        example = f'{{"{allowed[0]}": 0.5}}' if allowed else "{}"
        got = "an empty object" if isinstance(value, Mapping) else json_type(value)
        raise MixError(field, f"must be a non-empty object of {what} -> number, e.g. {example} (got {got})")
    out: dict[str, float] = {}
    for key, v in value.items():
        if not isinstance(key, str) or key not in allowed:
            raise MixError(_path(field, key), f"unknown {what}; this anchor set has: {', '.join(allowed) or '(none)'}")
        number = finite_float(v)
        if number is None:
            raise MixError(_path(field, key), f"must be a finite number (got {json_type(v)})")
        out[key] = number
    return out


def finite_float(v: object) -> float | None:
    """A finite float, or None for bools (JSON true is not 1), non-numbers, NaN, inf and ints too big for a float."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    try:
        number = float(v)
    except (OverflowError, ValueError, TypeError):
        return None
    return number if math.isfinite(number) else None


def _normalised(weights: dict[str, float], field: str, fix: str) -> dict[str, float]:
    """Values in [0, 1] summing to 1 within SUM_TOLERANCE, rescaled so the sum is 1 up to rounding."""
    total = math.fsum(weights.values())
    if not abs(total - 1.0) <= SUM_TOLERANCE:
        raise MixError(field, f"values must sum to 1 (got {total:.10g}); {fix}")
    return {k: w / total for k, w in weights.items()}


def json_type(value: object) -> str:
    """The JSON name of a value's type, for messages (never its repr: it may be huge or deeply nested)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, numbers.Real):
        return "number" if finite_float(value) is not None else "NaN, infinity or a number too large for a float"
    names = {str: "string", Mapping: "object", list: "array", tuple: "array"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


def _path(field: str, key: object) -> str:
    """``field.key`` with a long key shortened, for a key the caller sent (it may be anything)."""
    if not isinstance(key, str):
        return f"{field}.<{json_type(key)} key>"
    return f"{field}.{key if len(key) <= 64 else key[:61] + '...'}"

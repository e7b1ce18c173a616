"""Attribute targets -> alphas, by inverting an anchor set's calibration (pure: numpy, scipy only for joint solves).

A calibration (made by `lerpray eval calibrate`, stored beside the set: lerpray/anchors/calibration.py) holds, per
attribute i, the monotone response curve f_i of its scorer's mean score against alpha_i (attribute i alone,
lambda_i = 1), and the cross slopes S[i][j] = d mean(score_j) / d alpha_i measured while attribute i sweeps.

One target: alpha_i = f_i^-1(t_i) on the allowed alpha interval (a flat stretch of the curve: its midpoint).
Several targets: least squares over the alpha box, with the cross slopes as linear sensitivities around the hull
centre, so that asking for one attribute does not silently drag another::

    predicted_j(a) = f_j(a_j) + sum_{i != j} S[i][j] * (a_i - 0.5)
    minimise  sum_j ((predicted_j(a) - t_j) / span_j)^2   over a in [lo, hi]^n      # span_j: f_j's range on it

The allowed interval is [0, 1] (the anchors' hull), or with `"extrapolate": true` the server's alpha bounds
intersected with the calibrated grid (the curve is not known beyond it). A target outside the curve's range there
is refused (MixError naming the reachable range), or with extrapolate clamped to the nearest reachable score and
reported as clamped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from lerpray.mixing import FIELD as MIX_FIELD
from lerpray.mixing import AnchorLayout, ExtrapolationBounds, MixError, named_numbers
from lerpray.reply_model import PartialModel

__all__ = ["Calibration", "Curve", "TargetSolution", "reply_min_tokens", "solve_targets", "target_mix"]

FIELD = "interpolation.target"
CALIBRATE_HINT = "make one with `lerpray eval calibrate SET --scorers SCORER` (it is saved beside the set)"


@dataclass(frozen=True)
class Curve:
    """A monotone response curve: the scorer's fitted mean score at each calibrated alpha, linear in between."""

    scorer: str
    alphas: tuple[float, ...]  # [G] strictly increasing, containing 0 and 1
    fit: tuple[float, ...]  # [G] monotone (either direction)
    lo: tuple[float, ...] = ()  # [G] bootstrap band of the fit (empty: unknown)
    hi: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        a, f = np.asarray(self.alphas, float), np.asarray(self.fit, float)
        if a.ndim != 1 or len(a) < 2 or a.shape != f.shape or not np.all(np.diff(a) > 0):
            raise ValueError(f"curve of {self.scorer}: needs >= 2 strictly increasing alphas and one fit per alpha")
        if not (a[0] <= 0.0 and a[-1] >= 1.0) or not np.all(np.isfinite(f)):
            raise ValueError(f"curve of {self.scorer}: the alphas must cover [0, 1] and the fit must be finite")
        steps = np.diff(f)
        if not (np.all(steps >= -1e-12) or np.all(steps <= 1e-12)):
            raise ValueError(f"curve of {self.scorer}: the fit must be monotone")

    def domain(self, bounds: ExtrapolationBounds | None, extrapolate: bool) -> tuple[float, float]:
        """The alpha interval a target may use: [0, 1], or the server's bounds within the calibrated grid."""
        if not extrapolate or bounds is None:
            return 0.0, 1.0
        return max(bounds.alpha_min, self.alphas[0]), min(bounds.alpha_max, self.alphas[-1])

    def value(self, alpha: float) -> float:
        return float(np.interp(alpha, self.alphas, self.fit))

    def reachable(self, lo: float, hi: float) -> tuple[float, float]:
        """(min, max) of the curve over alphas in [lo, hi] (piecewise linear: the ends and the knots inside)."""
        inside = [
            self.value(lo),
            self.value(hi),
            *(f for a, f in zip(self.alphas, self.fit, strict=True) if lo < a < hi),
        ]
        return min(inside), max(inside)

    def invert(self, target: float, lo: float, hi: float) -> float:
        """The alpha in [lo, hi] where the curve equals `target` (the midpoint of a flat stretch); the target must
        be reachable there."""
        knots = [lo, *(a for a in self.alphas if lo < a < hi), hi]
        values = [self.value(a) for a in knots]
        hits: list[float] = []
        for k in range(len(knots) - 1):
            (a0, a1), (f0, f1) = knots[k : k + 2], values[k : k + 2]
            if min(f0, f1) - 1e-12 <= target <= max(f0, f1) + 1e-12:
                hits += [a0, a1] if f0 == f1 else [a0 + (target - f0) / (f1 - f0) * (a1 - a0)]
        if not hits:
            raise ValueError(f"target {target} is not reachable on [{lo}, {hi}]")
        return (min(hits) + max(hits)) / 2


@dataclass(frozen=True)
class Calibration:
    curves: dict[str, Curve]  # attribute -> its scorer's response to its own alpha
    cross: dict[str, dict[str, float]] = field(default_factory=dict)  # S[i][j]: d score_j / d alpha_i, i != j
    partial: dict[str, PartialModel] = field(default_factory=dict)  # attribute -> its partial-reply model (feedback)
    sampling: dict[str, float] = field(default_factory=dict)  # how its replies were sampled (max/min_tokens, ...)


@dataclass(frozen=True)
class TargetSolution:
    alpha: dict[str, float]  # the alphas the targets resolved to
    predicted: dict[str, float]  # the calibrated mean score each attribute is expected to reach there
    clamped: dict[str, float]  # attribute -> the reachable score used instead of its target ("extrapolate": true)
    joint: bool  # solved jointly with the cross slopes (several targets)

    def report(self) -> dict:
        out = {"alpha": self.alpha, "predicted": self.predicted, "solve": "joint" if self.joint else "inverse"}
        return {**out, "clamped": self.clamped} if self.clamped else out


def solve_targets(
    targets: Mapping[str, float],
    calibration: Calibration | None,
    bounds: ExtrapolationBounds | None,
    extrapolate: bool,
    *,
    joint: bool = True,
) -> TargetSolution:
    """Targets (attribute -> score on its calibrated scale, already checked to be finite numbers) -> alphas.

    Raises MixError naming `interpolation.target.<attr>`: no calibration, an attribute it does not cover, or a
    target outside the reachable range (without extrapolate). `joint=False` inverts each curve on its own (the
    baseline the joint solve is measured against)."""
    if calibration is None:
        raise MixError(FIELD, f"this anchor set has no calibration, so targets cannot be resolved; {CALIBRATE_HINT}")
    goals: dict[str, float] = {}
    clamped: dict[str, float] = {}
    box: dict[str, tuple[float, float]] = {}
    for attr, target in targets.items():
        curve = calibration.curves.get(attr)
        if curve is None:
            have = ", ".join(calibration.curves) or "(none)"
            raise MixError(f"{FIELD}.{attr}", f"the calibration has no curve for {attr!r} (it has: {have}); "
                           f"recalibrate with a scorer for it: {CALIBRATE_HINT}")  # fmt: skip
        box[attr] = curve.domain(bounds, extrapolate)
        low, high = curve.reachable(*box[attr])
        if low - 1e-9 <= target <= high + 1e-9:
            goals[attr] = min(max(target, low), high)
        elif extrapolate and bounds is not None:
            goals[attr] = clamped[attr] = low if target < low else high
        else:
            raise MixError(f"{FIELD}.{attr}", _out_of_range(attr, target, curve, (low, high), bounds))
    alpha = {a: calibration.curves[a].invert(t, *box[a]) for a, t in goals.items()}
    use_joint = joint and len(goals) > 1 and any(calibration.cross.get(i, {}).get(j) for i in goals for j in goals)
    if use_joint:
        alpha = _joint(goals, alpha, box, calibration)
    predicted = {j: _predict(j, alpha, calibration) for j in goals}
    return TargetSolution({a: _clean(v) for a, v in alpha.items()}, {a: _clean(v) for a, v in predicted.items()},
                          clamped, use_joint)  # fmt: skip


def target_mix(mix: Mapping, layout: AnchorLayout, bounds: ExtrapolationBounds | None, calibration: Calibration | None,
               problem: str | None = None) -> tuple[dict, dict]:  # fmt: skip
    """{"target": ..., "lambda"?, "extrapolate"?} -> (the alpha mix it stands for, what the reply adds about it).

    `problem`: why the set's calibration file cannot be used (read when the set loaded), refused as a MixError."""
    allowed = ("target", "lambda", "extrapolate")
    unknown = [k for k in mix if k not in allowed]
    if unknown:
        why = "give targets or alphas, not both" if unknown[0] == "alpha" else f"allowed keys: {', '.join(allowed)}"
        raise MixError(f"{MIX_FIELD}.{unknown[0]}", f"cannot go with target; {why}")
    targets = named_numbers(mix["target"], FIELD, list(layout.attributes), "attribute")
    if problem is not None:
        raise MixError(FIELD, f"this anchor set's calibration cannot be used: {problem}")
    extrapolate = mix.get("extrapolate", False) is True  # its type and the server's policy: checked by resolve_mix
    solution = solve_targets(targets, calibration, bounds, extrapolate and bounds is not None)
    alpha_mix = {k: v for k, v in mix.items() if k != "target"} | {"alpha": solution.alpha}
    if solution.alpha and any(not 0.0 <= a <= 1.0 for a in solution.alpha.values()):
        alpha_mix["extrapolate"] = True  # only reachable with extrapolate on (solve_targets kept it in [0, 1] else)
    report = {"target": dict(targets), **{k: v for k, v in solution.report().items() if k != "alpha"}}
    return alpha_mix, report | ({"calibrated_with": dict(calibration.sampling)} if calibration.sampling else {})


def reply_min_tokens(report: Mapping, asked: int | None, max_tokens: int) -> int:
    """The min_tokens a reply runs with: the request's if it set one, else (a target's) its calibration's, capped by
    max_tokens, since the calibrated mean is of replies that long; else 0."""
    if asked is not None:
        return asked
    return min(int(report.get("calibrated_with", {}).get("min_tokens", 0)), max_tokens)


def _predict(j: str, alpha: Mapping[str, float], calibration: Calibration) -> float:
    cross = sum(calibration.cross.get(i, {}).get(j, 0.0) * (a - 0.5) for i, a in alpha.items() if i != j)
    return calibration.curves[j].value(alpha[j]) + cross


def _joint(goals: dict[str, float], start: dict[str, float], box: dict[str, tuple[float, float]],
           calibration: Calibration) -> dict[str, float]:  # fmt: skip
    from scipy.optimize import least_squares

    names = list(goals)
    spans = [max(np.ptp(calibration.curves[a].fit), 1e-9) for a in names]

    def residuals(x: np.ndarray) -> np.ndarray:  # [n]
        alpha = dict(zip(names, x, strict=True))
        return np.array([(_predict(j, alpha, calibration) - goals[j]) / s for j, s in zip(names, spans, strict=True)])

    lo = np.array([box[a][0] for a in names])
    hi = np.array([box[a][1] for a in names])
    x0 = np.clip([start[a] for a in names], lo, hi)
    fit = least_squares(residuals, x0, bounds=(lo, hi + 1e-12), xtol=1e-10, ftol=1e-12, gtol=1e-12)
    return dict(zip(names, (float(v) for v in np.clip(fit.x, lo, hi)), strict=True))


def _out_of_range(attr: str, target: float, curve: Curve, reachable: tuple[float, float],
                  bounds: ExtrapolationBounds | None) -> str:  # fmt: skip
    msg = (f"{target:.6g} is outside the reachable range [{reachable[0]:.4g}, {reachable[1]:.4g}] of this set's "
           f"calibration ({curve.scorer} mean score, alpha in [0, 1]); ask for a value in that range")  # fmt: skip
    if bounds is None:
        return msg + " (this server does not allow extrapolation)"
    wide = curve.domain(bounds, True)
    far = curve.reachable(*wide)
    return (msg + f', or set "extrapolate": true to get the nearest reachable point with alpha in '
            f"[{wide[0]:g}, {wide[1]:g}] (reachable [{far[0]:.4g}, {far[1]:.4g}])")  # fmt: skip


def _clean(value: float) -> float:
    return round(float(value), 6) + 0.0 if math.isfinite(value) else value

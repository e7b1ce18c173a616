"""What the first k tokens of a reply say about its final score (pure numpy): the closed loop's predictive model.

A calibration sweep holds, per reply, its alpha, its final score and the score of its first k generated tokens for a
few checkpoints k. Per checkpoint, with both scores linear in alpha over the hull (least squares over the replies)::

    partial_k = m_k(alpha) + r_k          m_k(alpha) = intercept_k + slope_k * alpha   (the calibrated partial mean)
    final     = m(alpha)   + r            m(alpha)   = intercept + slope * alpha
    carry_k   = cov(r, r_k) / var(r_k), clipped to [0, 1]   (how much of a partial offset lasts to the end)
    ahead_k   = 1 - carry_k * slope_k / slope, clipped to [AHEAD_MIN, 1]
                                          (the share of alpha's effect on the final score still to come)

The closed loop (lerpray.feedback) compares a reply's partial score with m_k at the mean alpha its text was written
with, predicts the final offset d = carry_k * (score - m_k(alpha_so_far)), and sets the alpha of the rest so that
the prediction meets the target (f: the calibration's curve, linear with secant `slope_f` around the open-loop
alpha a0, where f(a0) = target)::

    final ~ target + slope_f * (1 - ahead_k) * (alpha_so_far - a0) + d + slope_f * ahead_k * (alpha_rest - a0)
    alpha_rest = a0 - gain * ((1 - ahead_k) * (alpha_so_far - a0) + d / slope_f) / ahead_k,  clipped to [lo, hi]

No tuned gains: the carry (a regression coefficient) shrinks noisy early scores toward the calibrated mean, and a
reply whose partial scores say nothing (carry 0) keeps its open-loop alpha. The partial means compare like with
like: the first tokens of a reply score differently from whole replies, which a loop comparing them with the final
target would read as an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AHEAD_MIN", "PartialModel", "fit_partial", "alpha_rest"]

AHEAD_MIN = 0.1  # below this little of the reply is left to steer: the step would only saturate


@dataclass(frozen=True)
class PartialModel:
    """Per checkpoint k (generated tokens, increasing): m_k's intercept and slope, carry_k and ahead_k."""

    tokens: tuple[int, ...]
    intercept: tuple[float, ...]
    slope: tuple[float, ...]
    carry: tuple[float, ...]
    ahead: tuple[float, ...]

    def __post_init__(self) -> None:
        k = np.asarray(self.tokens)
        sizes = {len(self.tokens), len(self.intercept), len(self.slope), len(self.carry), len(self.ahead)}
        if len(sizes) != 1 or not len(k) or np.any(k < 1) or np.any(np.diff(k) <= 0):
            raise ValueError("partial model: needs one value per checkpoint and increasing checkpoints >= 1")

    def at(self, generated: int) -> tuple[float, float, float, float]:
        """(intercept, slope, carry, ahead) after `generated` tokens, linear between checkpoints, flat outside."""
        k = float(generated)
        intercept, slope, carry, ahead = (float(np.interp(k, self.tokens, v)) for v in self.columns())
        return intercept, slope, carry, ahead

    def columns(self) -> tuple[tuple[float, ...], ...]:
        return self.intercept, self.slope, self.carry, self.ahead

    def report(self) -> dict:
        return {"tokens": list(self.tokens), "intercept": list(self.intercept), "slope": list(self.slope),
                "carry": list(self.carry), "ahead": list(self.ahead)}  # fmt: skip

    @classmethod
    def from_report(cls, doc: Mapping) -> PartialModel:
        return cls(
            tuple(int(v) for v in doc["tokens"]),
            *(tuple(float(v) for v in doc[key]) for key in ("intercept", "slope", "carry", "ahead")),
        )


def fit_partial(alpha: Sequence[float], final: Sequence[float], partial: Sequence[Sequence[float]],
                tokens: Sequence[int]) -> PartialModel:  # fmt: skip
    """alpha, final: [N] per reply (hull alphas); partial: [N, K] the score of each reply's first tokens[k] tokens
    (a reply shorter than that: its whole text). Rows with a non-finite score are left out per checkpoint."""
    a, y, p = np.asarray(alpha, float), np.asarray(final, float), np.asarray(partial, float)
    if p.shape != (len(a), len(tokens)) or y.shape != a.shape:
        raise ValueError(f"partial model: alpha and final need one value per reply and partial one column per "
                         f"checkpoint, got {a.shape}, {y.shape}, {p.shape} for {len(tokens)} checkpoints")  # fmt: skip
    ok = np.isfinite(y) & np.isfinite(a)
    slope_final, intercept_final = _line(a[ok], y[ok])
    rows: list[tuple[float, float, float, float]] = []
    for k in range(len(tokens)):
        use = ok & np.isfinite(p[:, k])
        slope_k, intercept_k = _line(a[use], p[use, k])
        r_k = p[use, k] - (intercept_k + slope_k * a[use])
        r = y[use] - (intercept_final + slope_final * a[use])
        var = float(np.mean(r_k**2)) if use.any() else 0.0
        carry = float(np.clip(np.mean(r * r_k) / var, 0.0, 1.0)) if var > 1e-12 else 0.0
        ahead = 1.0 - carry * slope_k / slope_final if abs(slope_final) > 1e-12 else 1.0
        rows.append((intercept_k, slope_k, carry, float(np.clip(ahead, AHEAD_MIN, 1.0))))
    columns = [tuple(round(float(v), 6) for v in col) for col in zip(*rows, strict=True)]
    return PartialModel(tuple(int(k) for k in tokens), *columns)


def alpha_rest(model: PartialModel, generated: int, score: float, so_far: float, *, start: float, slope: float,
               lo: float, hi: float, gain: float = 1.0) -> float:  # fmt: skip
    """The alpha for the rest of a reply whose first `generated` tokens, written at mean alpha `so_far`, score
    `score`; start: the open-loop alpha a0, slope: the calibration's secant slope (non-zero)."""
    intercept, slope_k, carry, ahead = model.at(generated)
    offset = carry * (score - (intercept + slope_k * so_far))  # d: the final offset this reply is heading for
    step = ((1.0 - ahead) * (so_far - start) + offset / slope) / ahead
    return float(min(max(start - gain * step, lo), hi))


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of y on x by least squares; a flat line at the mean when x does not vary."""
    if len(x) == 0:
        return 0.0, 0.0
    if np.ptp(x) <= 0:
        return 0.0, float(np.mean(y))
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)

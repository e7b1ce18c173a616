"""Sweep grids: mixes in the paper's parametrisation, and the (mix, prompt, sample) jobs run on them.

Grid points are mixes in the paper's parametrisation (lerpray.mixing): for attribute i with alpha_i and lambda_i,
c[high_i] = lambda_i * alpha_i and c[low_i] = lambda_i * (1 - alpha_i). Points with an alpha outside [0, 1] carry
`"extrapolate": true`. Sample s of every prompt uses seed `prompts.seed + s` at every mix (common random numbers),
so differences between mixes are not drowned by sampling noise.

Jobs are ordered prompt-major with the mix innermost, so each engine batch holds many mixes of a few prompts
(similar lengths, little padding); the engine runs any mix in any row of one forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from lerpray.eval.config import GridConfig
from lerpray.mixing import AnchorLayout, ExtrapolationBounds
from lerpray.steering import MixContext, ResolvedMix, resolve

__all__ = [
    "GridPoint",
    "Job",
    "SweepError",
    "alpha_grid",
    "build_grid",
    "lambda_grid",
    "make_jobs",
    "resolve_points",
    "simplex_grid",
]


class SweepError(ValueError):
    """A sweep that cannot run as configured; the message says what to change."""


@dataclass(frozen=True)
class GridPoint:
    mix_id: str  # unique within a sweep, e.g. "alpha:sentiment=0.25"
    grid: str  # "alpha" | "lambda" | "simplex"
    attribute: str  # the swept attribute (alpha grid) or the attributes mixed, joined by "+"
    x: float  # alpha of the swept attribute, or lambda of the first attribute; NaN on a simplex
    alpha: dict[str, float] = field(hash=False)
    lam: dict[str, float] = field(hash=False)

    @property
    def extrapolate(self) -> bool:
        return any(not 0.0 <= a <= 1.0 for a in self.alpha.values())

    def mix(self) -> dict:
        """The `interpolation` object of this point (lerpray.steering.resolve / the HTTP API)."""
        spec: dict = {"alpha": dict(self.alpha), "lambda": dict(self.lam)}
        return {**spec, "extrapolate": True} if self.extrapolate else spec


def _r(value: float) -> float:
    return round(float(value), 10) + 0.0  # 1 - 0.7 -> 0.3, and -0.0 -> 0.0, so ids and mixes are clean


def alpha_grid(attributes: Sequence[str], alphas: Sequence[float]) -> list[GridPoint]:
    """Each attribute swept alone (lambda 1, other attributes off) over `alphas`."""
    return [
        GridPoint(f"alpha:{attr}={_r(a):g}", "alpha", attr, _r(a), {attr: _r(a)}, {attr: 1.0})
        for attr in attributes
        for a in alphas
    ]


def lambda_grid(attributes: Sequence[str], lambdas: Sequence[float], fixed_alpha: dict[str, float]) -> list[GridPoint]:
    """Two attributes at fixed alphas (default 1: their high poles), lambda of the first over `lambdas`."""
    first, second = attributes
    alpha = {a: _r(fixed_alpha.get(a, 1.0)) for a in attributes}
    points = []
    for lam in lambdas:
        lams = {first: _r(lam), second: _r(1.0 - lam)}
        mix_id = f"lambda:{first}={lams[first]:g},{second}={lams[second]:g}"
        points.append(GridPoint(mix_id, "lambda", f"{first}+{second}", _r(lam), alpha, lams))
    return points


def simplex_grid(attributes: Sequence[str], steps: int, fixed_alpha: dict[str, float]) -> list[GridPoint]:
    """Three attributes at fixed alphas, lambda on the simplex in multiples of 1/steps ((steps+1)(steps+2)/2 points)."""
    alpha = {a: _r(fixed_alpha.get(a, 1.0)) for a in attributes}
    points = []
    for i in range(steps + 1):
        for j in range(steps + 1 - i):
            lams = dict(zip(attributes, (_r(i / steps), _r(j / steps), _r((steps - i - j) / steps)), strict=True))
            mix_id = "simplex:" + ",".join(f"{a}={v:g}" for a, v in lams.items())
            points.append(GridPoint(mix_id, "simplex", "+".join(attributes), math.nan, alpha, lams))
    return points


def build_grid(grids: Sequence[GridConfig], known_attributes: Sequence[str] | None) -> list[GridPoint]:
    """All points of all grids, duplicates (same mix id) dropped. `known_attributes`: the anchor set's, if known."""
    points: dict[str, GridPoint] = {}
    for index, grid in enumerate(grids):
        names = grid.attributes if grid.attributes is not None else known_attributes
        if names is None:
            raise SweepError(f"grids[{index}]: list `attributes` (the server's anchor set is not known here)")
        unknown = [a for a in [*names, *grid.fixed_alpha] if known_attributes is not None and a not in known_attributes]
        if unknown:
            raise SweepError(
                f"grids[{index}]: unknown attributes {unknown}; the anchor set has {list(known_attributes)}"
            )
        if grid.kind == "alpha":
            new = alpha_grid(names, grid.alphas)
        elif grid.kind == "lambda":
            new = lambda_grid(names, grid.lambdas, grid.fixed_alpha)
        else:
            new = simplex_grid(names, grid.steps, grid.fixed_alpha)
        points.update((p.mix_id, p) for p in new)
    return list(points.values())


def resolve_points(points: Sequence[GridPoint], layout: AnchorLayout) -> list[ResolvedMix]:
    """The mix of every point (lerpray.steering.resolve, as a request's); bounds widened to the grid's alphas (this
    sweep's operator is its user)."""
    alphas = [a for p in points for a in p.alpha.values()]
    context = MixContext(layout, ExtrapolationBounds(alpha_min=min(-1.0, *alphas), alpha_max=max(2.0, *alphas)))
    return [resolve(context, interpolation=p.mix()) for p in points]


@dataclass(frozen=True)
class Job:
    point: int  # index into the grid points
    prompt: int  # index into the prompts
    sample: int
    seed: int


def make_jobs(n_points: int, n_prompts: int, samples: int, seed: int) -> list[Job]:
    """Every (point, prompt, sample), prompt-major with the mix innermost: a batch of consecutive jobs mixes mixes."""
    return [
        Job(point, prompt, sample, seed + sample)
        for prompt in range(n_prompts)
        for sample in range(samples)
        for point in range(n_points)
    ]

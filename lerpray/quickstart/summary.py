"""The quickstart's summary: what its generations show, with the uncertainty that says whether they show it.

- `trend`: mean VADER per alpha with its standard error and n, every step between neighbouring alphas with its
  SE ("resolved" when |step| > 1.96 SE), "monotone" only when every step is resolved with one sign, the slope of
  score on alpha with a bootstrap 95 % interval over prompts, and the change 0 -> 1 in standard errors
  (lerpray.eval.statistics).
- `side_by_side`: one prompt and seed at alpha 0, 0.5 and 1, one under the other, for each prompt.
- `write_outputs`: every generation (generations.csv) and the score-vs-alpha plot with error bars
  (scores_vs_alpha.png) in the work dir.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lerpray.quickstart.steps import Generation

__all__ = ["SIDE_BY_SIDE_ALPHAS", "Trend", "side_by_side", "trend", "write_outputs"]

SIDE_BY_SIDE_ALPHAS = (0.0, 0.5, 1.0)


@dataclass
class Trend:
    means: dict[float, float] = field(default_factory=dict)  # alpha -> mean VADER score
    ses: dict[float, float] = field(default_factory=dict)  # alpha -> standard error of that mean
    counts: dict[float, int] = field(default_factory=dict)  # alpha -> generations
    steps: list[tuple[float, float, float, float, bool]] = field(default_factory=list)  # from, to, diff, se, resolved
    verdict: str = "no steps"  # "monotone increasing" only when every step is resolved (lerpray.eval.statistics)
    slope: float = math.nan  # least-squares slope of score on alpha
    slope_ci: tuple[float, float] = (math.nan, math.nan)  # 95 % bootstrap interval
    boot_unit: str = "prompt"  # what the bootstrap resampled
    change: float = math.nan  # mean(alpha 1) - mean(alpha 0)
    change_se: float = math.nan

    @property
    def monotone(self) -> bool:
        return self.verdict.startswith("monotone ") and not self.verdict.startswith("monotone not")

    def lines(self) -> list[str]:
        per_alpha = ", ".join(
            f"{a:g}: {m:+.2f} ± {self.ses[a]:.2f} (n={self.counts[a]})" for a, m in self.means.items()
        )
        steps = ", ".join(f"{a:g}->{b:g} {d:+.2f} ± {s:.2f}{'' if ok else ' (not resolved)'}"
                          for a, b, d, s, ok in self.steps)  # fmt: skip
        z = self.change / self.change_se if self.change_se > 0 else math.nan  # no spread (a tiny run): no z
        in_ses = f" = {z:.1f} SE" if math.isfinite(z) else ""
        low, high = self.slope_ci
        return [
            f"summary: mean VADER ± SE per alpha: {per_alpha}",
            f"  steps (± SE; resolved = |step| > 1.96 SE): {steps}",
            f"  verdict: {self.verdict}",
            f"  slope {self.slope:+.2f} per unit alpha, 95 % CI [{low:+.2f}, {high:+.2f}] (bootstrap over "
            f"{self.boot_unit}s); change 0->1 {self.change:+.2f} ± {self.change_se:.2f}{in_ses}",
        ]


def _frame(generations: Sequence[Generation]) -> pd.DataFrame:
    return pd.DataFrame([g.__dict__ for g in generations], columns=list(Generation.__dataclass_fields__))


def trend(generations: Sequence[Generation]) -> Trend:
    from lerpray.eval.statistics import cluster_sums, monotone_verdict, point_stats, step_stats
    from lerpray.eval.statistics import trend as slope_trend

    frame = _frame(generations)
    points = point_stats(frame["alpha"], frame["score"])
    steps = step_stats(points)
    slope = slope_trend(cluster_sums(frame["alpha"], frame["score"], frame["prompt"]))
    first, last = points.index[0], points.index[-1]
    return Trend(
        means=points["mean"].to_dict(), ses=points["se"].fillna(math.nan).to_dict(),
        counts={a: int(n) for a, n in points["n"].items()},
        steps=[(r["from"], r["to"], r["diff"], r["se"], bool(r["resolved"])) for _, r in steps.iterrows()],
        verdict=monotone_verdict(steps), slope=slope.slope, slope_ci=(slope.low, slope.high), boot_unit=slope.unit,
        change=points.at[last, "mean"] - points.at[first, "mean"],
        change_se=math.hypot(points.at[first, "se"], points.at[last, "se"]),
    )  # fmt: skip


def side_by_side(generations: Sequence[Generation], *, seed: int = 0) -> list[str]:
    """For each prompt, seed `seed`'s continuation at alpha 0, 0.5 and 1 with its VADER score."""
    by_key = {(g.prompt, g.seed, g.alpha): g for g in generations}
    lines = [f"same prompt, same seed ({seed}), alpha {', '.join(f'{a:g}' for a in SIDE_BY_SIDE_ALPHAS)}:"]
    for prompt in dict.fromkeys(g.prompt for g in generations):
        lines.append(f"  {prompt}")
        for alpha in SIDE_BY_SIDE_ALPHAS:
            g = by_key.get((prompt, seed, alpha))
            if g is not None:
                lines.append(f"    alpha {alpha:<4g} {g.score:+.2f}  | {' '.join(g.text.split())}")
    return lines


def write_outputs(generations: Sequence[Generation], workdir: Path) -> tuple[Path, Path]:
    """(generations.csv, scores_vs_alpha.png) in `workdir`: every generation, and mean VADER vs alpha ± 1.96 SE."""
    from lerpray.eval.plots import plot_alpha_means
    from lerpray.eval.statistics import point_stats

    frame = _frame(generations)
    table = workdir / "generations.csv"
    frame.to_csv(table, index=False, quoting=csv.QUOTE_NONNUMERIC)
    points = {"VADER (continuation)": point_stats(frame["alpha"], frame["score"])}
    plot = plot_alpha_means(points, workdir / "scores_vs_alpha.png", title="sentiment anchors")
    return table, plot

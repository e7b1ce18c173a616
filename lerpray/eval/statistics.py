"""Uncertainty for sweep curves: standard errors per alpha, resolved steps, a bootstrap slope, bootstrap ratios.

Pure numpy/pandas on the generations table (one row per generation; `x` = alpha, `prompt_id`, score columns).

- Point: mean, standard error sd / sqrt(n) and n of a score at one alpha.
- Step between neighbouring alphas a < b: mean(b) - mean(a) with SE sqrt(se_a^2 + se_b^2) (unpaired, so
  conservative: generations share prompts and seeds across alphas). A step is *resolved* when |step| > Z95 * SE.
  A curve is called monotone only when every step is resolved and all have one sign.
- Trend: the least-squares slope of score on alpha over all generations, with a 95 % percentile interval from a
  bootstrap that resamples clusters: prompts when there are >= MIN_CLUSTERS of them (a prompt's generations at
  every alpha stay together), single generations otherwise (the report says which).
- Ratio: (change 0 -> 1 of scorer j while sweeping i) / (change of scorer j while sweeping j's own attribute),
  bootstrapped the same way, both sweeps resampled with the same cluster weights.

The bootstrap runs on per-(alpha, cluster) sums, so B replicates are B x clusters matrix products, not B passes
over the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "MIN_CLUSTERS",
    "N_BOOT",
    "Z95",
    "ClusterSums",
    "Trend",
    "bootstrap_weights",
    "cluster_sums",
    "monotone_verdict",
    "point_stats",
    "ratio_interval",
    "step_stats",
    "trend",
]

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
N_BOOT = 2000
MIN_CLUSTERS = 5


def point_stats(xs: pd.Series, ys: pd.Series) -> pd.DataFrame:
    """Per distinct x (sorted): mean, se (NaN when n < 2) and n of the non-NaN ys."""
    frame = pd.DataFrame({"x": xs.to_numpy(float), "y": ys.to_numpy(float)}).dropna()
    g = frame.groupby("x")["y"]
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.count()})
    out["se"] = out["sd"] / np.sqrt(out["n"])
    return out[["mean", "se", "n"]].sort_index()


def step_stats(points: pd.DataFrame) -> pd.DataFrame:
    """Steps between neighbouring rows of `point_stats`: from, to, diff, se, z = diff / se, resolved."""
    rows = []
    xs = points.index.to_numpy(float)
    for a, b in zip(xs[:-1], xs[1:], strict=True):
        diff = points.at[b, "mean"] - points.at[a, "mean"]
        se = math.hypot(points.at[a, "se"], points.at[b, "se"])
        z = diff / se if se > 0 else math.nan
        rows.append({"from": a, "to": b, "diff": diff, "se": se, "z": z,
                     "resolved": bool(math.isfinite(z) and abs(z) > Z95)})  # fmt: skip
    return pd.DataFrame(rows, columns=["from", "to", "diff", "se", "z", "resolved"])


def monotone_verdict(steps: pd.DataFrame) -> str:
    """ "monotone increasing"/"monotone decreasing" only when every step is resolved with one sign; otherwise how
    many steps are resolved and whether any resolved step goes against the others."""
    if steps.empty:
        return "no steps"
    resolved = steps[steps["resolved"]]
    signs = set(np.sign(resolved["diff"]).astype(int))
    if len(resolved) == len(steps) and len(signs) == 1:
        return "monotone " + ("increasing" if signs == {1} else "decreasing")
    if len(signs) > 1:
        return f"not monotone: resolved steps of both signs ({len(resolved)} of {len(steps)} resolved)"
    return f"monotone not established: {len(resolved)} of {len(steps)} steps resolved"


@dataclass(frozen=True)
class ClusterSums:
    """Per (x, cluster) count and sum of a score: what every bootstrap statistic here is a function of."""

    xs: np.ndarray  # [X] distinct alphas, sorted
    clusters: list  # [C] cluster labels
    n: np.ndarray  # [X, C] generations
    s: np.ndarray  # [X, C] sum of scores
    unit: str  # "prompt" or "generation"


def cluster_sums(xs: pd.Series, ys: pd.Series, prompts: pd.Series, *, clusters: list | None = None) -> ClusterSums:
    """Sums by (x, prompt) when >= MIN_CLUSTERS prompts (or `clusters` given), else by (x, generation)."""
    frame = pd.DataFrame({"x": xs.to_numpy(float), "y": ys.to_numpy(float), "c": prompts.to_numpy()}).dropna()
    unit = "prompt"
    if clusters is None and frame["c"].nunique() < MIN_CLUSTERS:
        frame["c"], unit = np.arange(len(frame)), "generation"
    labels = clusters if clusters is not None else sorted(frame["c"].unique().tolist())
    grid_x = np.sort(frame["x"].unique())
    n = np.zeros((len(grid_x), len(labels)))  # [X, C]
    s = np.zeros((len(grid_x), len(labels)))  # [X, C]
    xi = np.searchsorted(grid_x, frame["x"].to_numpy())
    ci = pd.Index(labels).get_indexer(frame["c"])
    ok = ci >= 0
    np.add.at(n, (xi[ok], ci[ok]), 1.0)
    np.add.at(s, (xi[ok], ci[ok]), frame["y"].to_numpy()[ok])
    return ClusterSums(grid_x, list(labels), n, s, unit)


def bootstrap_weights(n_clusters: int, *, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[B, C] multinomial resampling counts: each row draws C clusters with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot).astype(float)


def _slope(xs: np.ndarray, n: np.ndarray, s: np.ndarray) -> np.ndarray:
    """OLS slope of y on x from per-x counts n [..., X] and sums s [..., X]."""
    total, sx = n.sum(-1), (n * xs).sum(-1)
    sxx, sxy, sy = (n * xs**2).sum(-1), (s * xs).sum(-1), s.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sxy - sx * sy / total) / (sxx - sx**2 / total)


@dataclass(frozen=True)
class Trend:
    slope: float  # score per unit alpha (least squares over all generations)
    low: float  # 95 % bootstrap percentile interval
    high: float
    unit: str  # what the bootstrap resampled: "prompt" or "generation"
    clusters: int


def trend(sums: ClusterSums, *, n_boot: int = N_BOOT, seed: int = 0) -> Trend:
    """Slope of score on alpha with a percentile-bootstrap 95 % interval over clusters."""
    slope = float(_slope(sums.xs, sums.n.sum(1), sums.s.sum(1)))
    w = bootstrap_weights(len(sums.clusters), n_boot=n_boot, seed=seed)  # [B, C]
    boot = _slope(sums.xs, w @ sums.n.T, w @ sums.s.T)  # [B]
    boot = boot[np.isfinite(boot)]
    low, high = np.percentile(boot, [2.5, 97.5]) if len(boot) else (math.nan, math.nan)
    return Trend(slope, float(low), float(high), sums.unit, len(sums.clusters))


def _change(sums: ClusterSums, w: np.ndarray) -> np.ndarray:
    """mean(alpha = 1) - mean(alpha = 0) under cluster weights w [B, C] -> [B]."""
    i0, i1 = np.searchsorted(sums.xs, 0.0), np.searchsorted(sums.xs, 1.0)
    if i0 >= len(sums.xs) or sums.xs[i0] != 0.0 or i1 >= len(sums.xs) or sums.xs[i1] != 1.0:
        return np.full(len(w), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ sums.s[i1]) / (w @ sums.n[i1]) - (w @ sums.s[i0]) / (w @ sums.n[i0])


def ratio_interval(
    cross: ClusterSums, own: ClusterSums, *, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[float, float, float]:
    """(ratio, low, high): change 0 -> 1 of `cross` over that of `own`, 95 % percentile interval, both resampled
    with one set of cluster weights (they must share the cluster labels; the caller builds them so)."""
    if cross.clusters != own.clusters:
        raise ValueError("cross and own sums must share their clusters; build both with clusters=...")
    one = np.ones((1, len(cross.clusters)))
    w = bootstrap_weights(len(cross.clusters), n_boot=n_boot, seed=seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = float((_change(cross, one) / _change(own, one))[0])
        boot = _change(cross, w) / _change(own, w)
    boot = boot[np.isfinite(boot)]
    if not len(boot) or not math.isfinite(ratio):
        return ratio, math.nan, math.nan
    low, high = np.percentile(boot, [2.5, 97.5])
    return ratio, float(low), float(high)

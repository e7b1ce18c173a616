"""Sweep and weight-space figures (matplotlib Figure objects rendered by the Agg canvas; pyplot is never used, so
no global backend is switched and plotting works headless and from threads). Each function writes one PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lerpray.eval.weights import WeightSimilarity

__all__ = [
    "plot_alpha_means",
    "plot_entanglement",
    "plot_perplexity",
    "plot_score_curves",
    "plot_ternary",
    "plot_weight_similarity",
]

_PREFIX = "score."


def _figure(n_panels: int, width: float = 4.2, height: float = 3.4, max_cols: int = 3) -> tuple[Figure, list[Axes]]:
    """One panel per item, wrapped into rows of at most `max_cols` (so a page can show it); spare cells hidden."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max(1, min(n_panels, max_cols))
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for spare in axes[n_panels:]:
        spare.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _shade_extrapolation(ax: Axes, xs: Sequence[float]) -> None:
    lo, hi = min(xs), max(xs)
    if lo < 0.0:
        ax.axvspan(lo, 0.0, color="0.9", zorder=0)
    if hi > 1.0:
        ax.axvspan(1.0, hi, color="0.9", zorder=0)


def plot_score_curves(summary: pd.DataFrame, scorer_attributes: dict[str, str], path: Path, *, grid: str = "alpha",
                      group: str | None = None) -> Path:  # fmt: skip
    """Mean score vs x (alpha, or lambda of the first attribute) with 95 % error bars (1.96 standard errors of the
    mean); one panel per scorer, one line per swept attribute (or per `group`, an attribute label of a lambda
    grid). Extrapolation is shaded."""
    rows = summary[(summary["grid"] == grid) & ((summary["attribute"] == group) if group else True)]
    fig, axes = _figure(len(scorer_attributes))
    for ax, (scorer, attr) in zip(axes, scorer_attributes.items(), strict=True):
        col = _PREFIX + scorer
        for label, part in rows.groupby("attribute", sort=False):
            part = part.sort_values("x")
            mean, std = part[f"{col}.mean"].to_numpy(float), part[f"{col}.std"].fillna(0.0).to_numpy(float)
            half = 1.96 * std / np.sqrt(np.maximum(part[f"{col}.count"].to_numpy(float), 1.0))
            ax.errorbar(part["x"], mean, yerr=half, marker="o", capsize=3, label=label,
                        linewidth=2.5 if label == attr else 1.2)  # fmt: skip
        if grid == "alpha" and len(rows):
            _shade_extrapolation(ax, rows["x"].tolist())
        ax.set_title(f"{scorer} (measures {attr})", fontsize=10)
        ax.set_xlabel("alpha (shaded: extrapolation)" if grid == "alpha" else f"lambda of {group.split('+')[0]}")
        ax.set_ylabel("score (mean ± 1.96 SE)")
        ax.legend(fontsize=8, title="swept" if grid == "alpha" else None)
    return _save(fig, path)


def plot_alpha_means(points: dict[str, pd.DataFrame], path: Path, *, title: str) -> Path:
    """One panel per scorer: mean score vs alpha with 95 % error bars (1.96 SE) and n per point; `points` maps a
    scorer label to lerpray.eval.statistics.point_stats output (index alpha; columns mean, se, n)."""
    fig, axes = _figure(len(points), width=4.6)
    for ax, (label, frame) in zip(axes, points.items(), strict=True):
        xs = frame.index.to_numpy(float)
        ax.errorbar(xs, frame["mean"], yerr=1.96 * frame["se"].fillna(0.0), marker="o", capsize=4, linewidth=2)
        for x, m, n in zip(xs, frame["mean"], frame["n"], strict=True):
            ax.annotate(f"n={int(n)}", (x, m), textcoords="offset points", xytext=(4, -12), fontsize=7)
        ax.set_title(f"{title}: {label}", fontsize=10)
        ax.set_xlabel("alpha")
        ax.set_ylabel("mean score ± 1.96 SE")
    return _save(fig, path)


def plot_entanglement(norm: pd.DataFrame, scorer_attributes: dict[str, str], path: Path) -> Path:
    """Heatmap of the normalised change 0 -> 1 [swept attribute x scorer] (1 on the diagonal by construction)."""
    fig, (ax,) = _figure(1, width=2.5 + 1.3 * max(2, norm.shape[1]), height=1.5 + 0.9 * max(2, norm.shape[0]))
    values = norm.to_numpy(float)
    image = ax.imshow(np.clip(values, -1.5, 1.5), cmap="RdBu_r", vmin=-1.5, vmax=1.5, aspect="auto")  # fill the figure
    for (i, j), v in np.ndenumerate(values):
        color = "white" if abs(v) > 1.0 else "black"  # NaN compares False: black
        ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=9, color=color)
    labels = [f"{s}\n[{scorer_attributes[s]}]" for s in norm.columns]
    ax.set_xticks(range(norm.shape[1]), labels, fontsize=8, rotation=25, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(norm.shape[0]), list(norm.index))
    ax.set_xlabel("scorer [attribute it measures]")
    ax.set_ylabel("attribute swept 0 -> 1")
    ax.set_title("change 0 -> 1 / scorer's own change", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, path)


def plot_perplexity(ppl: pd.DataFrame, path: Path, *, base: float | None = None) -> Path:
    """Held-out perplexity vs alpha per swept attribute (log scale when it spans > 10x), extrapolation shaded, the
    base model dashed."""
    rows = ppl[ppl["grid"] == "alpha"]
    fig, (ax,) = _figure(1, width=5.5, height=3.8)
    for attr, part in rows.groupby("attribute", sort=False):
        part = part.sort_values("x")
        ax.plot(part["x"], part["perplexity"], marker="o", label=attr)
    if len(rows):
        _shade_extrapolation(ax, rows["x"].tolist())
    if base is not None:
        ax.axhline(base, color="0.4", linestyle="--", label="base model")
    if len(rows) and rows["perplexity"].max() > 10 * rows["perplexity"].min():
        ax.set_yscale("log")  # extrapolation can blow perplexity up by orders of magnitude
    ax.set_xlabel("alpha (shaded: extrapolation)")
    ax.set_ylabel("held-out perplexity")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ternary(summary: pd.DataFrame, attributes: Sequence[str], scorer_attributes: dict[str, str],
                 path: Path) -> Path:  # fmt: skip
    """Mean score over a lambda simplex of three attributes; one triangle per scorer, corners = lambda 1."""
    from matplotlib.tri import Triangulation

    rows = summary[(summary["grid"] == "simplex") & (summary["attribute"] == "+".join(attributes))]
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])  # [3, 2]
    lams = rows[[f"lambda.{a}" for a in attributes]].to_numpy(float)  # [P, 3]
    xy = lams @ corners  # [P, 2] barycentric -> plane
    fig, axes = _figure(len(scorer_attributes), width=4.4, height=4.0)
    for ax, scorer in zip(axes, scorer_attributes, strict=True):
        mean = rows[f"{_PREFIX}{scorer}.mean"].to_numpy(float)
        ok = ~np.isnan(mean)
        if ok.sum() >= 3:
            ax.tricontourf(Triangulation(xy[ok, 0], xy[ok, 1]), mean[ok], levels=12, cmap="viridis")
        points = ax.scatter(xy[:, 0], xy[:, 1], c=mean, cmap="viridis", edgecolors="k", s=40, zorder=3)
        ax.plot(*np.vstack([corners, corners[:1]]).T, color="k", linewidth=1)
        for (cx, cy), name, dy in zip(corners, attributes, (-0.07, -0.07, 0.04), strict=True):
            ax.text(cx, cy + dy, name, ha="center", fontsize=9)
        ax.set_title(scorer, pad=14)
        ax.set_xlim(-0.1, 1.1)
        ax.set_ylim(-0.12, corners[2, 1] + 0.1)  # room for the corner labels and whole corner markers
        ax.set_aspect("equal")
        ax.axis("off")
        fig.colorbar(points, ax=ax, shrink=0.7)
    fig.suptitle(f"mean score over the lambda simplex of {', '.join(attributes)}; a corner is lambda = 1")
    return _save(fig, path)


def plot_weight_similarity(sim: WeightSimilarity, path: Path) -> Path:
    """Left: overall cosine [K x K]; right: cosine per layer for every anchor pair [pairs x layers]."""
    k = len(sim.anchors)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    layers = list(sim.per_layer)
    fig, (left, right) = _figure(
        2, width=max(4.5, 0.5 * k + 3, 0.35 * len(layers) + 3), height=max(4.0, 0.4 * len(pairs) + 2)
    )
    image = left.imshow(sim.overall, cmap="RdBu_r", vmin=-1, vmax=1)
    for (i, j), v in np.ndenumerate(sim.overall):
        color = "white" if abs(v) > 0.6 else "black"
        left.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8, color=color)
    left.set_xticks(range(k), sim.anchors, rotation=45, ha="right", fontsize=8)
    left.set_yticks(range(k), sim.anchors, fontsize=8)
    left.set_title("cosine of updates, all layers")
    per_layer = np.array([[sim.per_layer[layer][i, j] for layer in layers] for i, j in pairs]).reshape(len(pairs), -1)
    right.imshow(per_layer, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    right.set_xticks(range(len(layers)), layers, fontsize=7)
    right.set_yticks(range(len(pairs)), [f"{sim.anchors[i]} / {sim.anchors[j]}" for i, j in pairs], fontsize=7)
    right.set_xlabel("layer")
    right.set_title("cosine per layer")
    fig.colorbar(image, ax=[left, right], shrink=0.7)
    return _save(fig, path)

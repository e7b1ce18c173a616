"""`lerpray eval calibrate`: an anchor set's response curves, for `target` requests (lerpray/targets.py).

Per attribute i with a scorer: an alpha sweep (attribute i alone, lambda 1) on calibration prompts, then

- the curve: the scorer's mean at each alpha, fitted monotone by isotonic regression (weighted by the number of
  generations; direction chosen by the data), with a bootstrap band over prompts (prompts resampled with
  replacement, every sample of a drawn prompt kept; the fit's 5th and 95th percentiles);
- the cross slopes S[i][j] = d mean(score_j) / d alpha_i: the least-squares slope of every other attribute's scorer
  while attribute i sweeps alphas in [0, 1] (the entanglement matrix as linear sensitivities).

Prompts: the built-in prompts split by index (even: calibration, odd: held out for measuring target accuracy), or a
file. The document is saved beside the set (lerpray/anchors/calibration.py) and in `out` with its plot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from lerpray.configs import SamplingSettings
from lerpray.eval.config import BUILTIN_PROMPTS, GridConfig, PromptConfig, ScorerConfig, SweepConfig, load_prompts

__all__ = ["DEFAULT_CALIBRATION_ALPHAS", "calibrate", "cross_slopes", "fit_curve", "plot_calibration", "split_prompts"]

DEFAULT_CALIBRATION_ALPHAS = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def split_prompts(split: str, file: Path | None = None) -> list[str]:
    """Prompts of a split: "even" (calibration) / "odd" (held out) / "all" indices of the file or BUILTIN_PROMPTS."""
    prompts = load_prompts(PromptConfig(file=file)) if file else list(BUILTIN_PROMPTS)
    return {"even": prompts[0::2], "odd": prompts[1::2], "all": prompts}[split]


def fit_curve(table: pd.DataFrame, column: str, *, resamples: int = 200, seed: int = 0) -> dict:
    """table: rows of one attribute's alpha sweep with `x` (alpha), `prompt_id` and the score `column`.

    Returns {"alphas", "mean", "n", "fit", "lo", "hi", "increasing"} (lists per alpha, ascending)."""
    rows = table.dropna(subset=[column])
    alphas = np.sort(rows["x"].unique())
    fit, mean, n, increasing = _isotonic(rows, column, alphas)
    rng = np.random.default_rng(seed)
    prompts = rows["prompt_id"].unique()
    by_prompt = {p: g for p, g in rows.groupby("prompt_id")}
    draws = []
    for _ in range(resamples):
        pick = rng.choice(prompts, size=len(prompts), replace=True)
        sample = pd.concat([by_prompt[p] for p in pick])
        if sample["x"].nunique() == len(alphas):
            draws.append(_isotonic(sample, column, alphas, increasing)[0])
    band = np.percentile(draws, [5, 95], axis=0) if draws else np.vstack([fit, fit])
    return {"alphas": _r(alphas), "mean": _r(mean), "n": [int(k) for k in n], "fit": _r(fit), "lo": _r(band[0]),
            "hi": _r(band[1]), "increasing": bool(increasing)}  # fmt: skip


def _r(values) -> list[float]:
    return [round(float(v), 6) for v in values]


def _isotonic(rows: pd.DataFrame, column: str, alphas: np.ndarray, increasing: bool | str = "auto"):
    from sklearn.isotonic import IsotonicRegression

    stats = rows.groupby("x")[column].agg(["mean", "count"]).reindex(alphas)
    reg = IsotonicRegression(increasing=increasing).fit(alphas, stats["mean"], sample_weight=stats["count"])
    fit = reg.predict(alphas)
    direction = bool(reg.increasing_) if increasing == "auto" else increasing
    return fit, stats["mean"].to_numpy(), stats["count"].to_numpy(), direction


def cross_slopes(table: pd.DataFrame, columns: dict[str, str]) -> dict[str, dict[str, float]]:
    """S[i][j]: slope of mean(score_j) against alpha_i over i's sweep in [0, 1], for attributes i != j with scorers."""
    out: dict[str, dict[str, float]] = {}
    for i in columns:
        rows = table[(table["attribute"] == i) & table["x"].between(0.0, 1.0)]
        for j, col in columns.items():
            if j == i or rows.empty:
                continue
            means = rows.groupby("x")[col].mean().dropna()
            if len(means) >= 2:
                out.setdefault(i, {})[j] = round(float(np.polyfit(means.index, means.to_numpy(), 1)[0]), 6)
    return out


def calibrate(
    anchors: str,
    scorers: Sequence[ScorerConfig],
    out: Path,
    *,
    alphas: Sequence[float] = DEFAULT_CALIBRATION_ALPHAS,
    prompts: Sequence[str] | None = None,
    prompt_source: str = "builtin prompts, even indices",
    samples: int = 2,
    sampling: SamplingSettings | None = None,
    resamples: int = 200,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    base_model: str | None = None,
) -> dict:
    """Sweep, fit and return the calibration document (not yet stamped or saved: see save_calibration)."""
    from lerpray.eval.sweep import run_sweep

    if not (min(alphas) <= 0.0 and max(alphas) >= 1.0):
        raise ValueError(f"calibration alphas must cover [0, 1] (a target inverts the curve there), got {list(alphas)}")
    prompts = list(prompts if prompts is not None else split_prompts("even"))
    out.mkdir(parents=True, exist_ok=True)
    prompt_file = out / "calibration_prompts.txt"
    prompt_file.write_text("\n".join(p.replace("\n", " ") for p in prompts) + "\n")
    sampling = sampling or SamplingSettings(max_tokens=48)
    loaded = {s.spec: s.load() for s in scorers}
    attrs = {spec: sc.attribute for spec, sc in loaded.items()}
    config = SweepConfig(out=out / "sweep", anchors=anchors, base_model=base_model, device=device,
                         batch_size=batch_size, grids=[GridConfig(kind="alpha", attributes=sorted(set(attrs.values())),
                                                                  alphas=list(alphas))],
                         prompts=PromptConfig(file=prompt_file, samples=samples, seed=seed), sampling=sampling,
                         scorers=list(scorers))  # fmt: skip
    outputs = run_sweep(config)
    table = pd.read_csv(outputs.generations)
    columns = {sc.attribute: f"score.{sc.name}" for sc in loaded.values()}
    curves = {}
    for attr, col in columns.items():
        curve = fit_curve(table[table["attribute"] == attr], col, resamples=resamples, seed=seed)
        curves[attr] = {"scorer": col.removeprefix("score."), **curve}
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scorers": {
            sc.attribute: {"spec": spec, "name": sc.name, "high_pole": sc.high_pole} for spec, sc in loaded.items()
        },  # fmt: skip
        "prompts": {
            "source": prompt_source,
            "count": len(prompts),
            "samples": samples,
            "seed": seed,
            "sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        },  # fmt: skip
        "sampling": sampling.model_dump(),
        "bootstrap": {"resamples": resamples, "over": "prompts", "band": [5, 95]},
        "curves": curves,
        "cross_slopes": cross_slopes(table, columns),
    }


def plot_calibration(doc: dict, path: Path) -> Path:
    """One panel per attribute: mean score per alpha (dots), the monotone fit and its bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = doc["curves"]
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.4), squeeze=False)
    for ax, (attr, c) in zip(axes[0], curves.items(), strict=True):
        ax.fill_between(c["alphas"], c["lo"], c["hi"], alpha=0.25, label="90% band (bootstrap over prompts)")
        ax.plot(c["alphas"], c["fit"], "-", label="monotone fit (isotonic)")
        ax.plot(c["alphas"], c["mean"], "o", label="mean score")
        ax.axvspan(0, 1, color="grey", alpha=0.08)
        ax.set_xlabel(f"alpha ({attr}; shaded: the anchors' hull)")
        ax.set_ylabel(f"{c['scorer']} mean score")
        ax.set_title(f"{attr}: {doc['prompts']['count']} prompts x {doc['prompts']['samples']} samples")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

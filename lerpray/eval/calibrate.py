"""`lerpray eval calibrate`: an anchor set's response curves, for `target` requests (lerpray/targets.py).

Per attribute i with a scorer: an alpha sweep (attribute i alone, lambda 1) on calibration prompts, then

- the curve: the scorer's mean at each alpha, fitted monotone by isotonic regression (weighted by the number of
  generations; direction chosen by the data), with a bootstrap band over prompts (prompts resampled with
  replacement, every sample of a drawn prompt kept; the fit's 5th and 95th percentiles);
- the cross slopes S[i][j] = d mean(score_j) / d alpha_i: the least-squares slope of every other attribute's scorer
  while attribute i sweeps alphas in [0, 1] (the entanglement matrix as linear sensitivities).

Before a curve is kept it is checked (lerpray/eval/calibration_checks.py): mostly empty or unscorable replies, or an
alpha 0 -> 1 change within its own noise, refuse the calibration (CalibrationRefused, a ValueError saying what to
change). Each curve also carries the per-prompt change from alpha 0 (each prompt against its own baseline) and how
much of its range the bootstrap band takes.

Prompts: the shipped openings (lerpray/eval/prompt_sets.py; completion prompts in 13 domains) split by index
(even: calibration, odd: held out for measuring target accuracy), or a file (instruction prompts with chat=True).
The document is saved beside the set (lerpray/anchors/calibration.py) after these checks, and in `out` with its
plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lerpray.configs import CALIBRATION_MAX_TOKENS, CALIBRATION_MIN_TOKENS, SamplingSettings
from lerpray.eval.calibration_checks import check_replies, check_signal, prompt_change
from lerpray.eval.calibration_partial import Prefixes, partial_model, tokenizer_prefixes
from lerpray.eval.config import GridConfig, PromptConfig, ScorerConfig, SweepConfig
from lerpray.eval.prompt_sets import PromptSet, load_prompt_set

if TYPE_CHECKING:
    from lerpray.eval.scorer_base import Scorer

__all__ = [
    "DEFAULT_CALIBRATION_ALPHAS",
    "calibrate",
    "calibration_document",
    "cross_slopes",
    "fit_curve",
    "plot_calibration",
    "split_prompts",
]

DEFAULT_CALIBRATION_ALPHAS = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def split_prompts(split: str, file: Path | None = None) -> list[str]:
    """Prompts of a split: "even" (calibration) / "odd" (held out) / "all" indices of the file or the shipped
    openings (lerpray/eval/prompt_sets.py)."""
    return list(load_prompt_set(file, split).texts)


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
    prompts: PromptSet | Sequence[str] | None = None,
    prompt_source: str = "a list of prompts",
    chat: bool = False,
    samples: int = 1,
    sampling: SamplingSettings | None = None,
    resamples: int = 200,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    base_model: str | None = None,
    min_z: float = 2.0,
    max_unscorable: float = 0.5,
) -> dict:
    """Sweep, check (lerpray/eval/calibration_checks.py), fit and return the calibration document; not yet stamped
    or saved (see save_calibration). CalibrationRefused when most replies are empty or a curve is flat; `out` then
    keeps the sweep for a look at the replies.

    prompts: a PromptSet, plain prompts (described by `prompt_source`), or None for the shipped openings' even
    split. chat: send each prompt as a user message through the tokenizer's chat template (instruction prompts).
    """
    from lerpray.eval.sweep import run_sweep

    if 0.0 not in alphas or 1.0 not in alphas:
        raise ValueError(f"calibration alphas must include 0 and 1 (the anchors' hull, where a target inverts the "
                         f"curve and where the curve is checked), got {list(alphas)}")  # fmt: skip
    if prompts is None:
        prompts = load_prompt_set(split="even")
    elif not isinstance(prompts, PromptSet):
        prompts = PromptSet(tuple(prompts), ("",) * len(prompts), prompt_source)
    out.mkdir(parents=True, exist_ok=True)
    prompt_file = out / "calibration_prompts.txt"
    prompt_file.write_text("\n".join(p.replace("\n", " ") for p in prompts.texts) + "\n")
    sampling = sampling or SamplingSettings(max_tokens=CALIBRATION_MAX_TOKENS, min_tokens=CALIBRATION_MIN_TOKENS)
    loaded = {s.spec: s.load() for s in scorers}
    attrs = {spec: sc.attribute for spec, sc in loaded.items()}
    config = SweepConfig(out=out / "sweep", anchors=anchors, base_model=base_model, device=device,
                         batch_size=batch_size, grids=[GridConfig(kind="alpha", attributes=sorted(set(attrs.values())),
                                                                  alphas=list(alphas))],
                         prompts=PromptConfig(file=prompt_file, samples=samples, seed=seed, chat=chat),
                         sampling=sampling, scorers=list(scorers))  # fmt: skip
    outputs = run_sweep(config)
    table = pd.read_csv(outputs.generations, keep_default_na=False, na_values=[""])  # "NA" is text, "" none
    hint = (f"The sweep's replies are in {outputs.generations}; nothing was saved beside the set "
            f"(max_tokens {sampling.max_tokens}, {len(prompts.texts)} prompts, chat {chat}).")  # fmt: skip
    provenance = {**prompts.provenance(chat=chat), "samples": samples, "seed": seed}
    if base_model is None:
        from lerpray.anchors import open_set, read_manifest

        base_model = read_manifest(open_set(anchors)).base_model.name
    return calibration_document(table, list(loaded.items()), provenance, sampling, resamples=resamples, seed=seed,
                                min_z=min_z, max_unscorable=max_unscorable, hint=hint,
                                prefixes=tokenizer_prefixes(base_model))  # fmt: skip


def calibration_document(
    table: pd.DataFrame,
    scorers: Sequence[tuple[str, Scorer]],
    prompts: dict,
    sampling: SamplingSettings,
    *,
    resamples: int = 200,
    seed: int = 0,
    min_z: float = 2.0,
    max_unscorable: float = 0.5,
    hint: str = "",
    prefixes: Prefixes | None = None,
) -> dict:
    """The calibration document of an alpha sweep already made and scored: table rows with `attribute`, `x`
    (alpha), `prompt_id`, `text` and `score.<scorer name>`; scorers as (spec, scorer). Each curve is checked first
    (CalibrationRefused); `prompts` is the provenance to record. With `prefixes` (the base model's tokenizer cutting
    a reply after k tokens) each curve also gets its partial-reply model (the closed loop's)."""
    columns = {sc.attribute: f"score.{sc.name}" for _, sc in scorers}
    curves = {attr: _checked_curve(table[table["attribute"] == attr], attr, col, resamples=resamples, seed=seed,
                                   min_z=min_z, max_unscorable=max_unscorable, hint=hint)
              for attr, col in columns.items()}  # fmt: skip
    for _, sc in scorers if prefixes is not None else ():
        rows = table[table["attribute"] == sc.attribute]
        curves[sc.attribute]["partial"] = partial_model(rows, columns[sc.attribute], sc, prefixes, sampling.max_tokens)
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scorers": {sc.attribute: {"spec": spec, "name": sc.name, "high_pole": sc.high_pole} for spec, sc in scorers},
        "prompts": prompts,
        "sampling": sampling.model_dump(),
        "bootstrap": {"resamples": resamples, "over": "prompts", "band": [5, 95]},
        "curves": curves,
        "cross_slopes": cross_slopes(table, columns),
    }


def _checked_curve(rows: pd.DataFrame, attr: str, col: str, *, resamples: int, seed: int, min_z: float,
                   max_unscorable: float, hint: str) -> dict:  # fmt: skip
    """One attribute's curve, refused when its replies are mostly empty or it is flat; with the per-prompt change
    curve and how much of the range the bootstrap band takes."""
    scorer = col.removeprefix("score.")
    unscorable = check_replies(rows, col, attr, max_unscorable=max_unscorable, hint=hint)
    alphas = np.sort(rows["x"].unique())
    change, band, draws = prompt_change(rows, col, alphas, resamples=resamples, seed=seed)
    one = list(alphas).index(1.0)
    signal = check_signal(float(change[one]), draws, attr, scorer, int(rows["prompt_id"].nunique()), min_z=min_z,
                          hint=hint)  # fmt: skip
    curve = fit_curve(rows, col, resamples=resamples, seed=seed)  # after the check: a flat curve is not fitted
    zero = curve["alphas"].index(0.0)
    span = abs(curve["fit"][one] - curve["fit"][zero])
    hull = [k for k, a in enumerate(curve["alphas"]) if 0.0 <= a <= 1.0]
    widest = max(curve["hi"][k] - curve["lo"][k] for k in hull)
    baseline_sd = float(rows[rows["x"] == 0.0].groupby("prompt_id")[col].mean().std())  # how far prompts differ
    noise = {
        "band_over_range": round(widest / span, 4) if span > 0 else None,
        "change_band_over_range": round(float(band[1][one] - band[0][one]) / span, 4) if span > 0 else None,
        "baseline_sd_over_range": round(baseline_sd / span, 4) if span > 0 and np.isfinite(baseline_sd) else None,
    }
    return {"scorer": scorer, **curve, "change": _r(change), "change_lo": _r(band[0]), "change_hi": _r(band[1]),
            "signal": signal, "unscorable": unscorable, "noise_share": noise}  # fmt: skip


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

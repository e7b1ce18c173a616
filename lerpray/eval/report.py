"""Sweep tables, the statistics the paper reports, and the markdown report.

Definitions (all from the generations table, one row per generation, one `score.<scorer>` column per scorer):

- Control, per swept attribute i and scorer j of that attribute: Spearman correlation of the mean score vs alpha
  over the grid's alphas in [0, 1]; the change 0 -> 1 = mean(alpha_i = 1) - mean(alpha_i = 0) with standard error
  sqrt(var_1 / n_1 + var_0 / n_0) (unpaired, hence conservative: samples share seeds across mixes).
- Entanglement E[i, j]: the change 0 -> 1 of scorer j while attribute i sweeps, divided by the change of scorer j
  while its own attribute sweeps (the diagonal). |E[i, j]| > 0.25 off the diagonal is named in the report.
- Perplexity ratio, per attribute: the largest perplexity at an alpha strictly inside (0, 1) divided by the larger
  of the two anchors' (alpha 0 and alpha 1).

The report's control, agreement and entanglement sections add uncertainty (n per alpha, steps with standard errors,
bootstrap intervals on slopes and ratios): lerpray.eval.control on lerpray.eval.statistics.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lerpray.eval.grid import SweepError
from lerpray.eval.report_format import fmt, markdown_table

if TYPE_CHECKING:
    from lerpray.eval.grid import GridPoint, Job

__all__ = [
    "ENTANGLEMENT_LIMIT",
    "SCORE_PREFIX",
    "SweepOutputs",
    "alpha_effects",
    "entanglement",
    "generations_table",
    "markdown_table",
    "perplexity_summary",
    "rewrite_outputs",
    "spearman",
    "summarise",
    "write_outputs",
    "write_report",
]

SCORE_PREFIX = "score."
ENTANGLEMENT_LIMIT = 0.25


@dataclass
class SweepOutputs:
    out: Path  # the sweep folder
    generations: Path  # generations.csv: every generation with every score
    report: Path  # report.md
    plots: list[Path]
    perplexity: Path | None  # perplexity.csv, if configured


def generations_table(
    points: Sequence[GridPoint], prompts: Sequence[str], jobs: Sequence[Job], results
) -> pd.DataFrame:
    """One row per generation: the mix (alpha.<attr>, lambda.<attr>), the prompt, the sample and the result."""
    attrs = sorted({a for p in points for a in p.alpha})
    rows = []
    for job, result in zip(jobs, results, strict=True):
        p = points[job.point]
        rows.append({
            "mix_id": p.mix_id, "grid": p.grid, "attribute": p.attribute, "x": p.x, "extrapolate": p.extrapolate,
            **{f"alpha.{a}": p.alpha.get(a, math.nan) for a in attrs},
            **{f"lambda.{a}": p.lam.get(a, 0.0) for a in attrs},
            "prompt_id": job.prompt, "sample": job.sample, "seed": job.seed, "prompt": prompts[job.prompt],
            "text": result.text, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "finish_reason": result.finish_reason,
        })  # fmt: skip
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per mix: mean, std and count of every score column (NaN scores, e.g. FKGL of a text without words, skipped)."""
    cols = [c for c in table.columns if c.startswith(SCORE_PREFIX)]
    keys = ["mix_id", "grid", "attribute", "x", "extrapolate"]
    stats = table.groupby("mix_id", sort=False)[cols].agg(["mean", "std", "count"])
    stats.columns = [f"{c}.{s}" for c, s in stats.columns]
    extra = [c for c in table.columns if c.startswith(("alpha.", "lambda."))]
    first = table.groupby("mix_id", sort=False)[keys[1:] + extra].first()
    return first.join(stats).reset_index()


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant or < 3 points."""
    x, y = pd.Series(list(x), dtype=float), pd.Series(list(y), dtype=float)
    ok = x.notna() & y.notna()
    rx, ry = x[ok].rank(), y[ok].rank()
    if len(rx) < 3 or rx.nunique() < 2 or ry.nunique() < 2:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def alpha_effects(table: pd.DataFrame, scorer_attributes: dict[str, str]) -> pd.DataFrame:
    """Per (swept attribute, scorer): Spearman over alpha in [0, 1], change 0 -> 1 and its standard error."""
    sweeps = table[table["grid"] == "alpha"]
    rows = []
    for attr, group in sweeps.groupby("attribute", sort=False):
        inside = group[(group["x"] >= 0.0) & (group["x"] <= 1.0)]
        for scorer, scorer_attr in scorer_attributes.items():
            col = SCORE_PREFIX + scorer
            means = inside.groupby("x")[col].mean()
            at0, at1 = group.loc[group["x"] == 0.0, col].dropna(), group.loc[group["x"] == 1.0, col].dropna()
            delta = at1.mean() - at0.mean() if len(at0) and len(at1) else math.nan
            se = math.sqrt(at1.var() / len(at1) + at0.var() / len(at0)) if min(len(at0), len(at1)) > 1 else math.nan
            rows.append({"attribute": attr, "scorer": scorer, "own": scorer_attr == attr,
                         "spearman": spearman(means.index, means.values), "delta": delta, "se": se,
                         "n0": len(at0), "n1": len(at1)})  # fmt: skip
    return pd.DataFrame(rows, columns=["attribute", "scorer", "own", "spearman", "delta", "se", "n0", "n1"])


def entanglement(effects: pd.DataFrame, scorer_attributes: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(raw changes [swept attributes x scorers], changes divided by each scorer's diagonal: its own attribute's)."""
    raw = effects.pivot(index="attribute", columns="scorer", values="delta")
    raw = raw.reindex(index=list(dict.fromkeys(effects["attribute"])), columns=list(scorer_attributes))
    norm = raw.copy()
    for scorer, attr in scorer_attributes.items():
        diagonal = raw.at[attr, scorer] if attr in raw.index else math.nan
        norm[scorer] = raw[scorer] / diagonal if diagonal and math.isfinite(diagonal) else math.nan
    return raw, norm


def perplexity_summary(ppl: pd.DataFrame) -> pd.DataFrame:
    """Per alpha-swept attribute: anchors' perplexities, the worst inside (0, 1), their ratio, the worst overall."""
    rows = []
    for attr, group in ppl[ppl["grid"] == "alpha"].groupby("attribute", sort=False):
        by_x = group.set_index("x")["perplexity"]
        anchors = [by_x.get(0.0, math.nan), by_x.get(1.0, math.nan)]
        inside = by_x[(by_x.index > 0.0) & (by_x.index < 1.0)]
        worst_inside = inside.max() if len(inside) else math.nan
        worse_anchor = pd.Series(anchors).max()  # NaN-skipping; NaN only if neither anchor was swept
        rows.append({"attribute": attr, "alpha0": anchors[0], "alpha1": anchors[1], "max_inside": worst_inside,
                     "ratio": worst_inside / worse_anchor, "max_all": by_x.max(),
                     "argmax_all": by_x.idxmax()})  # fmt: skip
    return pd.DataFrame(rows, columns=["attribute", "alpha0", "alpha1", "max_inside", "ratio", "max_all", "argmax_all"])


_fmt = fmt


def _entanglement_section(
    raw: pd.DataFrame, norm: pd.DataFrame, scorer_attributes: dict[str, str], intervals: pd.DataFrame | None
) -> str:
    if raw.empty:
        return "No alpha sweeps: no entanglement matrix.\n"
    ci = {} if intervals is None else {(r.swept, r.scorer): (r.low, r.high) for r in intervals.itertuples()}

    def cell(attr: str, scorer: str) -> str:
        low, high = ci.get((attr, scorer), (math.nan, math.nan))
        interval = f" [{_fmt(low)}, {_fmt(high)}]" if math.isfinite(low) else ""
        return f"{_fmt(norm.at[attr, scorer])}{interval} ({_fmt(raw.at[attr, scorer])})"

    rows = [(attr, *(cell(attr, s) for s in raw.columns)) for attr in raw.index]
    text = ("Normalised change with its 95 % bootstrap interval over prompts (raw change in brackets); rows: "
            "attribute swept, columns: scorer.\n\n")  # fmt: skip
    text += markdown_table(["swept \\ scorer", *(f"{s} [{scorer_attributes[s]}]" for s in raw.columns)], rows)
    pairs = [(a, s, norm.at[a, s]) for a in norm.index for s in norm.columns
             if scorer_attributes[s] != a and abs(norm.at[a, s]) > ENTANGLEMENT_LIMIT]  # fmt: skip

    def named(a: str, s: str, v: float) -> str:
        low, high = ci.get((a, s), (math.nan, math.nan))
        sure = "" if not math.isfinite(low) else (" (interval excludes 0)" if low > 0 or high < 0 else
                                                  " (interval includes 0: not resolved)")  # fmt: skip
        return f"sweeping {a} moves {s} by {v:+.0%} of its own change{sure}"

    limit = f"{ENTANGLEMENT_LIMIT:.0%}"
    listed = "; ".join(named(*p) for p in pairs)
    return text + (f"\nPairs above {limit}: {listed}.\n" if pairs else f"\nNo off-diagonal change above {limit}.\n")


def _control_section(effects: pd.DataFrame) -> str:
    own = effects[effects["own"]]
    if own.empty:
        return "No alpha sweep of an attribute that a configured scorer measures.\n"
    rows = [(r.attribute, r.scorer, r.spearman, f"{_fmt(r.delta)} ± {_fmt(r.se)}", f"{r.n0} / {r.n1}")
            for r in own.itertuples()]  # fmt: skip
    return markdown_table(["attribute", "scorer", "Spearman (alpha in [0, 1])", "change 0 -> 1 ± SE", "n"], rows)


def _perplexity_section(summary: pd.DataFrame | None, base: float | None) -> str:
    if summary is None:
        return "Not computed (configure `perplexity` with held-out texts).\n"
    rows = [(r.attribute, r.alpha0, r.alpha1, r.max_inside, r.ratio, f"{_fmt(r.max_all)} at alpha {_fmt(r.argmax_all)}")
            for r in summary.itertuples()]  # fmt: skip
    text = f"Base model (no anchors): {_fmt(base)}.\n\n" if base is not None else ""
    header = ["attribute", "alpha 0", "alpha 1", "max inside (0, 1)", "ratio", "max over the sweep"]
    return text + markdown_table(header, rows)


def write_report(
    path: Path,
    *,
    setup: dict[str, object],
    summary: pd.DataFrame,
    effects: pd.DataFrame,
    scorer_attributes: dict[str, str],
    ppl_summary: pd.DataFrame | None = None,
    base_perplexity: float | None = None,
    plots: Sequence[Path] = (),
    table: pd.DataFrame | None = None,
) -> Path:
    """Write the markdown report; plots are linked relative to the report's folder. With the generations `table`,
    control, entanglement and agreement come with their uncertainty (lerpray.eval.control)."""
    from lerpray.eval import control as ctl

    raw, norm = entanglement(effects, scorer_attributes)
    if table is not None:
        control_text = ctl.control_section(ctl.control_table(table, scorer_attributes))
        intervals = ctl.entanglement_intervals(table, scorer_attributes)
        agreement_text = ctl.agreement_section(ctl.scorer_agreement(table, scorer_attributes))
    else:
        control_text, intervals, agreement_text = _control_section(effects), None, "Not computed.\n"
    score_cols = [f"{SCORE_PREFIX}{s}.mean" for s in scorer_attributes]
    mix_rows = [(r["mix_id"], *(r[c] for c in score_cols)) for _, r in summary.iterrows()]
    parts = [
        "# Sweep report\n",
        "".join(f"- {k}: {v}\n" for k, v in setup.items()),
        "## Attribute control\n", control_text,
        "## Scorer agreement on generated text\n", agreement_text,
        "## Entanglement\n", _entanglement_section(raw, norm, scorer_attributes, intervals),
        "## Perplexity (fluency)\n", _perplexity_section(ppl_summary, base_perplexity),
        "## Plots\n", "".join(f"![{p.stem}]({p.name})\n\n" for p in plots),
        "## Mean score per mix\n", markdown_table(["mix", *scorer_attributes], mix_rows),
    ]  # fmt: skip
    path.write_text("\n".join(parts))
    return path


def write_outputs(
    out: Path,
    table: pd.DataFrame,
    scorer_attributes: dict[str, str],
    *,
    setup: dict[str, object],
    perplexity: pd.DataFrame | None = None,
) -> SweepOutputs:
    """Write generations.csv, summary.csv, effects.csv, perplexity.csv, the plots, report.md and sweep.json (the
    setup and the scorers, so `rewrite_outputs` can redo the rest from the CSVs) into `out`."""
    from lerpray.eval import plots

    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"setup": setup, "scorers": scorer_attributes}, indent=1))
    # Every string quoted: generated text may hold "\r", which unquoted would split a row for most CSV readers.
    table.to_csv(out / "generations.csv", index=False, quoting=csv.QUOTE_NONNUMERIC)
    summary = summarise(table)
    summary.to_csv(out / "summary.csv", index=False)
    effects = alpha_effects(table, scorer_attributes)
    effects.to_csv(out / "effects.csv", index=False)
    figures = []
    if (summary["grid"] == "alpha").any():
        figures.append(plots.plot_score_curves(summary, scorer_attributes, out / "scores_vs_alpha.png"))
        figures.append(plots.plot_entanglement(entanglement(effects, scorer_attributes)[1], scorer_attributes,
                                               out / "entanglement.png"))  # fmt: skip
    for label in summary.loc[summary["grid"] == "lambda", "attribute"].unique():
        path = out / f"scores_vs_lambda_{label.replace('+', '_')}.png"
        figures.append(plots.plot_score_curves(summary, scorer_attributes, path, grid="lambda", group=label))
    for label in summary.loc[summary["grid"] == "simplex", "attribute"].unique():
        path = out / f"ternary_{label.replace('+', '_')}.png"
        figures.append(plots.plot_ternary(summary, label.split("+"), scorer_attributes, path))
    ppl_summary, base, ppl_path = None, None, None
    if perplexity is not None:
        ppl_path = out / "perplexity.csv"
        perplexity.to_csv(ppl_path, index=False)
        base_rows = perplexity.loc[perplexity["grid"] == "base", "perplexity"]
        base = float(base_rows.iloc[0]) if len(base_rows) else None
        ppl_summary = perplexity_summary(perplexity)
        if (perplexity["grid"] == "alpha").any():
            figures.append(plots.plot_perplexity(perplexity, out / "perplexity_vs_alpha.png", base=base))
    report = write_report(out / "report.md", setup=setup, summary=summary, effects=effects,
                          scorer_attributes=scorer_attributes, ppl_summary=ppl_summary, base_perplexity=base,
                          plots=figures, table=table)  # fmt: skip
    return SweepOutputs(out, out / "generations.csv", report, figures, ppl_path)


def rewrite_outputs(out: Path) -> SweepOutputs:
    """Recompute the tables, plots and report of a finished sweep from its generations.csv and perplexity.csv,
    without generating anything (after a change to the statistics or the plots, or a hand-edited table)."""
    out = Path(out)
    missing = [name for name in ("generations.csv", "sweep.json") if not (out / name).is_file()]
    if missing:
        raise SweepError(f"{out} has no {' or '.join(missing)}: --replot needs a finished sweep there; run it first")
    meta = json.loads((out / "sweep.json").read_text())
    table = pd.read_csv(out / "generations.csv", keep_default_na=False, na_values=[""])
    table["text"] = table["text"].fillna("").astype(str)  # an empty generation is text, not a missing value
    ppl = pd.read_csv(out / "perplexity.csv") if (out / "perplexity.csv").is_file() else None
    return write_outputs(out, table, meta["scorers"], setup=meta["setup"], perplexity=ppl)

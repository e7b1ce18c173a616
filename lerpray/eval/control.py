"""Control, entanglement and scorer agreement with their uncertainty: the report sections built on
lerpray.eval.statistics.

- `control_table`: per swept attribute and every scorer of that attribute (corpus-derived and independent side by
  side): n per alpha, per-step differences with SEs, the monotone verdict, the slope with its bootstrap 95 %
  interval, and the 0 -> 1 change in standard errors.
- `entanglement_intervals`: every normalised entanglement ratio with a bootstrap 95 % interval over prompts.
- `scorer_agreement`: per attribute, Spearman correlation between each pair of its scorers over the sweep's
  generations: the check of each corpus classifier on generated text rather than on corpus text.
"""

from __future__ import annotations

import math

import pandas as pd

from lerpray.eval.report_format import fmt, markdown_table
from lerpray.eval.scorers import scorer_origin
from lerpray.eval.statistics import Z95, cluster_sums, monotone_verdict, point_stats, ratio_interval, step_stats, trend

__all__ = ["agreement_section", "control_section", "control_table", "entanglement_intervals", "scorer_agreement"]

SCORE_PREFIX = "score."


def _sweep(table: pd.DataFrame, attribute: str) -> pd.DataFrame:
    rows = table[(table["grid"] == "alpha") & (table["attribute"] == attribute)]
    return rows[(rows["x"] >= 0.0) & (rows["x"] <= 1.0)]


def control_table(table: pd.DataFrame, scorer_attributes: dict[str, str], *, seed: int = 0) -> pd.DataFrame:
    """One row per (swept attribute, scorer of that attribute); see the module docstring."""
    rows = []
    swept = list(dict.fromkeys(table.loc[table["grid"] == "alpha", "attribute"]))
    for attr in swept:
        group = _sweep(table, attr)
        for scorer, scorer_attr in scorer_attributes.items():
            if scorer_attr != attr:
                continue
            ys = group[SCORE_PREFIX + scorer]
            points = point_stats(group["x"], ys)
            steps = step_stats(points)
            tr = trend(cluster_sums(group["x"], ys, group["prompt_id"]), seed=seed)
            at0 = points.loc[0.0] if 0.0 in points.index else None
            at1 = points.loc[1.0] if 1.0 in points.index else None
            delta = at1["mean"] - at0["mean"] if at0 is not None and at1 is not None else math.nan
            se = math.hypot(at0["se"], at1["se"]) if at0 is not None and at1 is not None else math.nan
            rows.append({
                "attribute": attr, "scorer": scorer, "origin": scorer_origin(scorer, attr),
                "n": "/".join(str(int(n)) for n in points["n"]),
                "steps": ", ".join(f"{d:+.3g}±{s:.2g}{'*' if r else ''}"
                                   for d, s, r in zip(steps["diff"], steps["se"], steps["resolved"], strict=True)),
                "verdict": monotone_verdict(steps), "slope": tr.slope, "slope_low": tr.low, "slope_high": tr.high,
                "boot_unit": tr.unit, "delta": delta, "se": se, "z": delta / se if se else math.nan,
            })  # fmt: skip
    return pd.DataFrame(rows)


def control_section(control: pd.DataFrame) -> str:
    if control.empty:
        return "No alpha sweep of an attribute that a configured scorer measures.\n"
    rows = [(r.attribute, r.scorer, r.origin, r.n, r.steps, r.verdict,
             f"{fmt(r.slope)} [{fmt(r.slope_low)}, {fmt(r.slope_high)}]", f"{fmt(r.delta)} ± {fmt(r.se)}",
             f"{r.z:+.1f}" if math.isfinite(r.z) else "n/a") for r in control.itertuples()]  # fmt: skip
    units = sorted(set(control["boot_unit"]))
    text = (
        "Scorers of each swept attribute, corpus-derived (fitted on or defining the attribute's corpora) and "
        "independent side by side. n: generations per alpha (alpha ascending). Steps: difference of means between "
        f"neighbouring alphas ± SE; * = resolved (|step| > {Z95:.2f} SE). Monotone only when every step is resolved "
        f"with one sign. Slope: least squares of score on alpha, 95 % bootstrap interval over {' / '.join(units)}s. "
        "z: the 0 -> 1 change in standard errors.\n\n"
    )
    header = ["attribute", "scorer", "origin", "n per alpha", "steps ± SE", "verdict", "slope [95 % CI]",
              "change 0 -> 1 ± SE", "z"]  # fmt: skip
    text += markdown_table(header, rows)
    missing = sorted(set(control["attribute"]) - set(control.loc[control["origin"] == "independent", "attribute"]))
    if missing:
        text += (
            f"\nNo independent scorer for: {', '.join(missing)} (none found offline; see lerpray/eval/lexical.py).\n"
        )
    return text


def entanglement_intervals(table: pd.DataFrame, scorer_attributes: dict[str, str], *, seed: int = 0) -> pd.DataFrame:
    """(swept, scorer, ratio, low, high): change of scorer j while sweeping i over its change while sweeping its own
    attribute, with a 95 % bootstrap interval resampling prompts jointly in both sweeps."""
    alpha = table[table["grid"] == "alpha"]
    swept = list(dict.fromkeys(alpha["attribute"]))
    labels = sorted(alpha["prompt_id"].unique().tolist())
    rows = []
    for scorer, own_attr in scorer_attributes.items():
        if own_attr not in swept:
            continue
        col = SCORE_PREFIX + scorer
        own_group = _sweep(table, own_attr)
        own = cluster_sums(own_group["x"], own_group[col], own_group["prompt_id"], clusters=labels)
        for attr in swept:
            group = _sweep(table, attr)
            cross = cluster_sums(group["x"], group[col], group["prompt_id"], clusters=labels)
            ratio, low, high = ratio_interval(cross, own, seed=seed)
            rows.append({"swept": attr, "scorer": scorer, "ratio": ratio, "low": low, "high": high})
    return pd.DataFrame(rows, columns=["swept", "scorer", "ratio", "low", "high"])


def scorer_agreement(table: pd.DataFrame, scorer_attributes: dict[str, str]) -> pd.DataFrame:
    """(attribute, scorer a, scorer b, spearman, n) over all generations of attribute's alpha sweep."""
    rows = []
    for attr in dict.fromkeys(table.loc[table["grid"] == "alpha", "attribute"]):
        group = _sweep(table, attr)
        names = [s for s, a in scorer_attributes.items() if a == attr]
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                pair = group[[SCORE_PREFIX + a, SCORE_PREFIX + b]].dropna()
                rho = pair.corr(method="spearman").iat[0, 1] if len(pair) > 2 else math.nan
                rows.append({"attribute": attr, "a": a, "a_origin": scorer_origin(a, attr), "b": b,
                             "b_origin": scorer_origin(b, attr), "spearman": rho, "n": len(pair)})  # fmt: skip
    return pd.DataFrame(rows, columns=["attribute", "a", "a_origin", "b", "b_origin", "spearman", "n"])


def agreement_section(agreement: pd.DataFrame) -> str:
    if agreement.empty:
        return "Fewer than two scorers per swept attribute: nothing to compare.\n"
    rows = [(r.attribute, f"{r.a} ({r.a_origin})", f"{r.b} ({r.b_origin})", r.spearman, r.n)
            for r in agreement.itertuples()]  # fmt: skip
    text = (
        "Spearman correlation between two scorers of one attribute over that attribute's sweep generations: "
        "how far a corpus-fitted scorer agrees with an independent one on generated text, not corpus text. It is "
        "negative where the two scorers' high poles are opposite (P(simple) against a grade level).\n\n"
    )
    return text + markdown_table(["attribute", "scorer a", "scorer b", "Spearman", "n"], rows)

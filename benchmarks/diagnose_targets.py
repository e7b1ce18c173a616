"""Why targets miss: the sources of error in a calibration sweep, as shares of the reachable range.

    OMP_NUM_THREADS=1 python benchmarks/diagnose_targets.py --sweep runs/cal/sweep/generations.csv \\
        --out benchmarks/results/target_diagnosis.json

From one attribute's alpha sweep (the generations.csv `lerpray eval calibrate` leaves in its --out folder), in the
hull (alpha 0 to 1), with the range = the change of the mean score from alpha 0 to 1:

- replies: mean generated tokens, the share finished within k tokens, the SD of reply scores (around each
  alpha's mean);
- prompts: the SD of the prompts' own offsets (each prompt's mean residual, less what the sampling noise of its
  replies explains), the same for domains (less what their prompts' spread explains), and how well a cheap request-time feature predicts a prompt's offset
  (the correlation with the scorer's score of the prompt text itself);
- partial replies: how much of a reply's final residual its first k tokens explain (R^2), the ceiling of what a
  closed loop can see by then;
- the standard error of a held-out mean of P prompts x S samples (what a measurement of target accuracy can
  resolve).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from _common import write_json  # benchmarks/_common.py (the script's folder is on sys.path)

from lerpray.eval.calibration_partial import tokenizer_prefixes
from lerpray.eval.prompt_sets import OPENINGS
from lerpray.eval.scorers import get_scorer


def net_sd(means: pd.Series, counts: pd.Series, residual_var: float) -> float:
    """SD of group means less the part their sampling noise explains (0 when noise explains all of it)."""
    return float(np.sqrt(max(means.var() - residual_var * float(np.mean(1.0 / counts)), 0.0)))


def domain_sd(hull: pd.DataFrame) -> float:
    """SD of the domains' mean offsets less what their prompts' spread within each domain explains (one-way
    analysis of variance on the prompts' mean residuals)."""
    prompts = hull.groupby(["domain", "prompt"])["res"].mean().reset_index()
    groups = prompts.groupby("domain")["res"]
    noise = float(np.mean(groups.var() / groups.count()))
    return float(np.sqrt(max(groups.mean().var() - noise, 0.0)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", type=Path, required=True, help="generations.csv of a calibration sweep")
    p.add_argument("--scorer", default="vader")
    p.add_argument("--base-model", default=None, help="tokenizer for the partial replies (default: bundled)")
    p.add_argument("--tokens", default="2,4,8,12")
    p.add_argument("--held-out", default="72x4", help="PROMPTSxSAMPLES of a held-out measurement")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/target_diagnosis.json"))
    args = p.parse_args()
    col = f"score.{args.scorer}"
    table = pd.read_csv(args.sweep, keep_default_na=False, na_values=[""]).dropna(subset=[col])
    hull = table[table["x"].between(0.0, 1.0)].copy()
    means = hull.groupby("x")[col].mean()
    span = float(means[1.0] - means[0.0])
    hull["res"] = hull[col] - hull["x"].map(means)
    reply_var = float(hull.groupby("prompt_id")["res"].var().mean())  # within a prompt, over its alphas and seeds
    domains = {json.loads(line)["text"]: json.loads(line)["domain"] for line in OPENINGS.read_text().splitlines()}
    hull["domain"] = hull["prompt"].map(domains).fillna("")
    by_prompt = hull.groupby("prompt")["res"].agg(["mean", "count"])
    by_domain = hull.groupby("domain")["res"].agg(["mean", "count"])
    scorer = get_scorer(args.scorer)
    own = np.asarray(scorer.score(list(by_prompt.index)), dtype=float)
    tokens = [int(k) for k in args.tokens.split(",")]
    cut = tokenizer_prefixes(args.base_model)
    texts = [t if isinstance(t, str) else "" for t in hull["text"]]
    partial = np.asarray(scorer.score([c for t in texts for c in cut(t, tokens)]), dtype=float)
    partial = partial.reshape(len(texts), len(tokens))
    a = hull["x"].to_numpy(float)
    r2 = {}
    for j, k in enumerate(tokens):
        r_k = partial[:, j] - np.polyval(np.polyfit(a, partial[:, j], 1), a)
        r2[str(k)] = round(float(np.corrcoef(hull["res"], r_k)[0, 1] ** 2), 3) if r_k.std() > 0 else 0.0
    prompt_sd = net_sd(by_prompt["mean"], by_prompt["count"], reply_var)
    held_p, held_s = (int(v) for v in args.held_out.split("x"))
    held_se = float(np.sqrt(prompt_sd**2 / held_p + reply_var / (held_p * held_s)))
    report = {
        "sweep": str(args.sweep), "scorer": args.scorer, "range": round(span, 4),
        "replies": {"count": len(hull), "mean_tokens": round(float(hull["completion_tokens"].mean()), 2),
                    "done_within": {str(k): round(float((hull["completion_tokens"] <= k).mean()), 3)
                                    for k in tokens},
                    "sd": round(float(np.sqrt(reply_var)), 4),
                    "sd_over_range": round(float(np.sqrt(reply_var)) / span, 3)},
        "prompts": {"count": len(by_prompt), "offset_sd_over_range": round(prompt_sd / span, 3),
                    "own_score_corr": round(float(np.corrcoef(own, by_prompt["mean"])[0, 1]), 3)
                    if own.std() > 0 else 0.0,
                    "own_score_nonzero": round(float((own != 0).mean()), 3)},
        "domains": {"count": len(by_domain),
                    "offset_sd_over_range": round(domain_sd(hull) / span, 3),
                    "offsets": {d: round(float(m), 4) for d, m in by_domain["mean"].items()}},
        "partial_r2": r2,
        "held_out": {"prompts": held_p, "samples": held_s, "se_of_mean_over_range": round(held_se / span, 3)},
    }  # fmt: skip
    print(json.dumps(report, indent=1))
    write_json(args.out, report)


if __name__ == "__main__":
    main()

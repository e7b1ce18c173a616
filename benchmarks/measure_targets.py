"""How well `target` requests hit their targets: achieved mean score vs target on held-out prompts.

    lerpray eval calibrate SET --scorers vader --out results/calibration \\
        --prompts jobs/configs/calibration_prompts.txt --split even          # calibrate on the even prompts
    python benchmarks/measure_targets.py --anchors SET --prompts jobs/configs/calibration_prompts.txt --split odd \\
        --out benchmarks/results/target_accuracy.json --plot docs/figures/target_accuracy.png

For every calibrated attribute: targets at `levels` of its reachable range in the hull ([min, max] of the curve on
alpha in [0, 1]), each resolved to an alpha exactly as the server does (lerpray.steering), generated on the held-out
prompts with `samples` seeds each (in-process engine), scored by the calibration's own scorer. Reported: per target
the achieved mean with a 90 % bootstrap interval over prompts, and the mean absolute error over targets as a
fraction of the reachable range (goal: <= 15 %), with its bootstrap interval. With two or more attributes, every
pair is also measured with the joint solve and with independent inversion (the same targets).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from _common import write_json  # benchmarks/_common.py (the script's folder is on sys.path)

from lerpray.anchors import open_set
from lerpray.anchors.calibration import calibration_of, read_calibration_doc
from lerpray.eval.calibrate import split_prompts
from lerpray.eval.scorers import get_scorer
from lerpray.model import Engine, GenerationRequest, SamplingParams
from lerpray.steering import MixContext, resolve
from lerpray.targets import solve_targets


def generate(engine: Engine, coeffs: list[tuple], prompts: list[str], samples: int, sampling: dict,
             seed: int) -> list[list]:  # fmt: skip
    """texts[mix][prompt * samples + sample]; sample s uses seed `seed + s` at every mix"""
    requests = [GenerationRequest(coeffs=c, prompt=p, request_id=f"{m}/{i}/{s}",
                                  sampling=SamplingParams(seed=seed + s, **sampling))
                for m, c in enumerate(coeffs) for i, p in enumerate(prompts) for s in range(samples)]  # fmt: skip
    results = {r.request_id: r.text for r in engine.generate(requests)}
    return [[results[f"{m}/{i}/{s}"] for i in range(len(prompts)) for s in range(samples)] for m in range(len(coeffs))]


def bootstrap_mean(values: np.ndarray, prompts: int, samples: int, rng, resamples: int = 1000) -> tuple[float, float]:
    """90 % interval of the mean of `values` [prompts * samples], resampling prompts (unscorable replies, NaN, left
    out: e.g. FKGL of a reply with no words)."""
    with np.errstate(all="ignore"):
        per_prompt = np.nanmean(values.reshape(prompts, samples), axis=1)
    per_prompt = per_prompt[np.isfinite(per_prompt)]
    draws = [per_prompt[rng.integers(0, len(per_prompt), len(per_prompt))].mean() for _ in range(resamples)]
    return float(np.percentile(draws, 5)), float(np.percentile(draws, 95))


def mae_interval(errors: np.ndarray, rng, resamples: int = 1000) -> tuple[float, float]:
    """errors [targets, prompts, samples] signed (achieved - target): 90 % interval of the MAE, prompts resampled."""
    n = errors.shape[1]
    draws = []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        draws.append(np.abs(np.nanmean(errors[:, pick], axis=(1, 2))).mean())
    return float(np.percentile(draws, 5)), float(np.percentile(draws, 95))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anchors", required=True)
    p.add_argument("--prompts", type=Path, default=None)
    p.add_argument("--split", default="odd")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--pair-samples", type=int, default=None, help="seeds per prompt for the pairs (default: --samples)")
    p.add_argument("--levels", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--seed-offset", type=int, default=1000, help="seeds differ from the calibration's")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/target_accuracy.json"))
    p.add_argument("--plot", type=Path, default=Path("docs/figures/target_accuracy.png"))
    args = p.parse_args()

    doc = read_calibration_doc(open_set(args.anchors))
    if doc is None:
        raise SystemExit(f"{args.anchors} has no calibration: run `lerpray eval calibrate` first")
    cal = calibration_of(doc)
    prompts = split_prompts(args.split, args.prompts)
    engine = Engine.from_uri(args.anchors, max_batch_size=64)
    sampling = {k: v for k, v in doc["sampling"].items() if k in ("temperature", "top_p", "top_k", "max_tokens")}
    levels = [float(v) for v in args.levels.split(",")]
    rng = np.random.default_rng(0)
    report: dict = {"anchors": args.anchors, "calibration": {k: doc[k] for k in ("anchor_set", "prompts", "sampling")},
                    "held_out": {"prompts": f"{args.prompts or 'builtin'}, {args.split} indices", "count": len(prompts),
                                 "samples": args.samples, "pair_samples": args.pair_samples or args.samples},
              "single": {}, "pairs": {}}  # fmt: skip
    samples = args.samples
    for attr, curve in cal.curves.items():
        scorer = get_scorer(doc["scorers"][attr]["spec"])
        lo, hi = curve.reachable(0.0, 1.0)
        targets = [lo + f * (hi - lo) for f in levels]
        steerings = [resolve(MixContext(engine.layout, calibration=cal), interpolation={"target": {attr: t}})
                     for t in targets]
        texts = generate(engine, [s.coeffs for s in steerings], prompts, samples, sampling, args.seed_offset)
        rows, errors = [], []
        for t, s, group in zip(targets, steerings, texts, strict=True):
            scores = np.array(scorer.score(group), dtype=float)
            errors.append((scores - t).reshape(len(prompts), samples))
            ci = bootstrap_mean(scores, len(prompts), samples, rng)
            achieved = float(np.nanmean(scores))
            rows.append({"target": round(t, 4), "alpha": s.report["alpha"][attr], "achieved": round(achieved, 4),
                         "interval90": [round(v, 4) for v in ci], "abs_error": round(abs(achieved - t), 4),
                         "scored": int(np.isfinite(scores).sum()), "generated": len(scores)})  # fmt: skip
        err = np.array(errors)
        mae = float(np.abs(np.nanmean(err, axis=(1, 2))).mean())
        span = hi - lo
        ci = mae_interval(err, rng)
        report["single"][attr] = {"scorer": curve.scorer, "reachable": [round(lo, 4), round(hi, 4)], "targets": rows,
                                  "mae": round(mae, 4), "mae_interval90": [round(v, 4) for v in ci],
                                  "mae_fraction_of_range": round(mae / span, 4) if span > 0 else None,
                                  "mae_fraction_interval90": [round(v / span, 4) for v in ci] if span > 0 else None}  # fmt: skip
        print(f"{attr}: reachable [{lo:.3f}, {hi:.3f}]  MAE {mae:.3f} (90% {ci[0]:.3f}-{ci[1]:.3f}) = "
              f"{mae / span:.1%} of the range" if span > 0 else f"{attr}: flat curve")
        for r in rows:
            print(f"  target {r['target']:+.3f}  alpha {r['alpha']:.3f}  achieved {r['achieved']:+.3f}  "
                  f"90% [{r['interval90'][0]:+.3f}, {r['interval90'][1]:+.3f}]")
    for a, b in itertools.combinations(cal.curves, 2):
        report["pairs"][f"{a}+{b}"] = measure_pair(engine, cal, doc, (a, b), prompts, args.pair_samples or samples,
                                                   sampling, args)
        print(f"{a}+{b}: {report['pairs'][f'{a}+{b}']['mae_fraction_of_range']}")
    write_json(args.out, report)
    plot(report, args.plot)
    print(f"wrote {args.out} and {args.plot}")


def measure_pair(engine, cal, doc, pair, prompts, samples, sampling, args) -> dict:
    """Targets at 30 % / 70 % of each range (4 combinations), solved jointly and independently; MAE per attribute
    as a fraction of its reachable range."""
    spans = {a: cal.curves[a].reachable(0.0, 1.0) for a in pair}
    combos = [{a: spans[a][0] + f * (spans[a][1] - spans[a][0]) for a, f in zip(pair, fs, strict=True)}
              for fs in itertools.product((0.3, 0.7), repeat=2)]  # fmt: skip
    out = {}
    for mode in ("joint", "independent"):
        alphas = [solve_targets(t, cal, None, False, joint=mode == "joint").alpha for t in combos]
        coeffs = [resolve(MixContext(engine.layout), interpolation={"alpha": al}).coeffs for al in alphas]
        texts = generate(engine, coeffs, prompts, samples, sampling, args.seed_offset)
        errs = {a: [] for a in pair}
        for t, group in zip(combos, texts, strict=True):
            for a in pair:
                scores = get_scorer(doc["scorers"][a]["spec"]).score(group)
                errs[a].append(abs(float(np.nanmean(scores)) - t[a]) / max(spans[a][1] - spans[a][0], 1e-9))
        out[mode] = {a: round(float(np.mean(e)), 4) for a, e in errs.items()}
    return {"targets": combos, "mae_fraction_of_range": out}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attrs = report["single"]
    fig, axes = plt.subplots(1, len(attrs), figsize=(4.2 * len(attrs), 3.8), squeeze=False)
    for ax, (attr, r) in zip(axes[0], attrs.items(), strict=True):
        t = [row["target"] for row in r["targets"]]
        y = [row["achieved"] for row in r["targets"]]
        err = [[row["achieved"] - row["interval90"][0] for row in r["targets"]],
               [row["interval90"][1] - row["achieved"] for row in r["targets"]]]  # fmt: skip
        ax.errorbar(t, y, yerr=err, fmt="o", capsize=3, label="achieved mean (90% CI, held-out prompts)")
        ax.plot(r["reachable"], r["reachable"], "k--", lw=1, label="achieved = target")
        ax.set_xlabel(f"target ({r['scorer']} mean score)")
        ax.set_ylabel("achieved")
        ax.set_title(f"{attr}: MAE {r['mae_fraction_of_range']:.0%} of the reachable range")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

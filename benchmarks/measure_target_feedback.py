"""Closed-loop vs open-loop targets: how close replies land, their spread, throughput and fluency.

    OMP_NUM_THREADS=1 python benchmarks/measure_target_feedback.py --anchors runs/quickstart/anchors \\
        --out benchmarks/results/target_feedback_quickstart.json

For one calibrated attribute (`--attribute`, default the set's first): targets at `levels` of its reachable range in the hull, each resolved
exactly as the server does (lerpray.steering.resolve with the set's calibration), once open loop
(`{"target": ...}`) and once closed loop (`{"target": ..., "feedback": {...}}`, each request's hook built by
lerpray.eval.steer.steerer, the function the serve layer and the batch actor use). Prompts: the shipped openings'
held-out (odd) half, `--per-domain` of each domain except `--exclude` (the quickstart calibrates on review openers).
`--modes open` for an attribute whose scorer cannot run mid-reply (a classifier: the server refuses its feedback).
Open and closed runs of a target use the same prompts and seeds, one after the other, in an engine of
`--batch` slots. Reported per target and mode: achieved mean (95 % bootstrap interval over prompts), |mean - target|
and the mean per-reply |score - target| as % of the range, the share of replies within `--band` of the range of
the target, the SD of reply scores; per mode (after one warm-up run): generated tokens per wall and per process CPU second; with
`--perplexity`, the perplexity of the replies (given their prompts) under the base model (every coefficient 0).
On a CPU shared with other work, one torch thread (OMP_NUM_THREADS=1) ran 20x faster than two (spinning threads).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from _common import write_json  # benchmarks/_common.py (the script's folder is on sys.path)

from lerpray.anchors import open_set
from lerpray.anchors.calibration import calibration_of, read_calibration_doc
from lerpray.eval.prompt_sets import load_prompt_set
from lerpray.eval.scorers import get_scorer
from lerpray.eval.steer import steerer
from lerpray.model import Engine, GenerationRequest, SamplingParams
from lerpray.steering import MixContext, resolve

MODES = ("open", "closed")


def held_out(per_domain: int, exclude: set[str], split: str = "odd") -> tuple[list[str], list[str]]:
    """The first `per_domain` openings of `split` of each domain not in `exclude` (texts, domains)."""
    prompts = load_prompt_set(split=split)
    picked: dict[str, list[str]] = {}
    for text, domain in zip(prompts.texts, prompts.domains, strict=True):
        if domain not in exclude and len(picked.setdefault(domain, [])) < per_domain:
            picked[domain].append(text)
    return [t for ts in picked.values() for t in ts], [d for d, ts in picked.items() for _ in ts]


def run(engine: Engine, mix, prompts: list[str], samples: int, sampling: dict, seed: int,
        closed: bool) -> tuple[list[str], dict]:  # fmt: skip
    """Replies [prompt * samples + sample] and the run's timing (sample s uses seed `seed + s`); closed loop, the
    last alpha each reply used (its trajectory's last entry before its last token)."""
    requests = [GenerationRequest(mix=mix, prompt=p, request_id=f"{i}/{s}",
                                  sampling=SamplingParams(seed=seed + s, **sampling),
                                  steer=steerer(mix.feedback, engine.layout) if closed else None)
                for i, p in enumerate(prompts) for s in range(samples)]  # fmt: skip
    wall, cpu = time.perf_counter(), time.process_time()
    results = engine.generate(requests)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = sum(r.completion_tokens for r in results)
    by_id = {r.request_id: r.text for r in results}
    texts = [by_id[f"{i}/{s}"] for i in range(len(prompts)) for s in range(samples)]
    last = [r.steer.report(0)["trajectory"][-1]["alpha"] for r in requests] if closed else []
    return texts, {"tokens": tokens, "wall_s": wall, "cpu_s": cpu, "last_alpha": last}


def interval95(scores: np.ndarray, prompts: int, samples: int, rng, resamples: int = 2000) -> tuple[list[float], float]:
    """95 % interval of the mean score, prompts resampled, and the bootstrap standard error of the mean."""
    per_prompt = scores.reshape(prompts, samples)
    per_prompt = np.nanmean(per_prompt[np.isfinite(per_prompt).any(axis=1)], axis=1)  # unscorable replies left out
    prompts = len(per_prompt)
    draws = [per_prompt[rng.integers(0, prompts, prompts)].mean() for _ in range(resamples)]
    return [round(float(np.percentile(draws, 2.5)), 4), round(float(np.percentile(draws, 97.5)), 4)], float(np.std(draws))


def base_perplexity(engine: Engine, pairs: list[tuple[str, str]]) -> float:
    """exp(mean NLL of the reply tokens given their prompt) under the base model (all coefficients 0): the NLL of
    prompt + reply minus that of the prompt alone (the model is causal, so the prompt's own tokens cancel)."""
    from lerpray.eval.perplexity import encode_texts, mix_nll

    zeros = [0.0] * len(engine.layout.anchors)
    full, alone = [p + r for p, r in pairs], [p for p, _ in pairs]
    total, count = mix_nll(engine.imodel, encode_texts(engine.tokenizer, full, 512), zeros)
    total0, count0 = mix_nll(engine.imodel, encode_texts(engine.tokenizer, alone, 512), zeros)
    return math.exp((total - total0) / (count - count0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anchors", default="runs/quickstart/anchors")
    p.add_argument("--attribute", help="the calibrated attribute to target (default: the calibration's first)")
    p.add_argument("--modes", default="open,closed", help="comma-separated: open, closed or both")
    p.add_argument("--per-domain", type=int, default=2)
    p.add_argument("--exclude", default="reviews", help="comma-separated domains left out")
    p.add_argument("--split", default="odd", choices=("odd", "all"), help="all: both halves of the domains left "
                   "in (for domains the calibration never saw)")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=40)
    p.add_argument("--levels", default="0.1,0.5,0.9")
    p.add_argument("--feedback", default='{"every": 8, "gain": 0.5, "integral": 0.3}', help="the feedback object")
    p.add_argument("--extrapolate", action="store_true", help='both modes send "extrapolate": true (the loops '
                   "may leave the hull up to the server's default bounds on the calibrated grid)")
    p.add_argument("--band", type=float, default=0.15, help="'within' = |score - target| <= band * range")
    p.add_argument("--batch", type=int, default=16, help="engine slots")
    p.add_argument("--seed-offset", type=int, default=1000, help="seeds differ from the calibration's")
    p.add_argument("--perplexity", action="store_true")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/target_feedback_quickstart.json"))
    args = p.parse_args()
    feedback = json.loads(args.feedback)
    doc = read_calibration_doc(open_set(args.anchors))
    if doc is None:
        raise SystemExit(f"{args.anchors} has no calibration: run `lerpray eval calibrate` first")
    cal = calibration_of(doc)
    attr = args.attribute or next(iter(cal.curves))
    if attr not in cal.curves:
        raise SystemExit(f"{args.anchors}'s calibration has no {attr!r} curve (it has {', '.join(cal.curves)})")
    curve = cal.curves[attr]
    modes = tuple(m for m in MODES if m in args.modes.split(","))
    scorer = get_scorer(doc["scorers"][attr]["spec"])
    prompts, domains = held_out(args.per_domain, set(args.exclude.split(",")), args.split)
    engine = Engine.from_uri(args.anchors, max_batch_size=args.batch)
    sampling = {k: v for k, v in doc["sampling"].items() if k in ("temperature", "top_p", "top_k", "min_tokens")}
    sampling["max_tokens"] = max(args.max_tokens, sampling.get("min_tokens", 0))  # asked as calibrated
    context = MixContext(engine.layout, calibration=cal)
    lo, hi = curve.reachable(0.0, 1.0)
    span = hi - lo
    rng = np.random.default_rng(0)
    timing = {m: {"tokens": 0, "wall_s": 0.0, "cpu_s": 0.0} for m in modes}
    replies = {m: [] for m in modes}
    rows = []
    n = len(prompts) * args.samples
    warm = {"target": {attr: (lo + hi) / 2}, **({"feedback": feedback} if "closed" in modes else {})}
    run(engine, resolve(context, interpolation=warm, max_tokens=args.max_tokens), prompts[: args.batch], 1, sampling,
        0, "closed" in modes)  # warm-up
    for level in (float(v) for v in args.levels.split(",")):
        target = lo + level * span
        row: dict = {"level": level, "target": round(target, 4)}
        for mode in modes:
            spec = {"target": {attr: target}, **({"feedback": feedback} if mode == "closed" else {}),
                    **({"extrapolate": True} if args.extrapolate else {})}  # fmt: skip
            mix = resolve(context, interpolation=spec, max_tokens=args.max_tokens)
            texts, t = run(engine, mix, prompts, args.samples, sampling, args.seed_offset, mode == "closed")
            last = [next(iter(a.values())) for a in t.pop("last_alpha")]
            for k in t:
                timing[mode][k] += t[k]
            replies[mode] += list(zip([prompts[i // args.samples] for i in range(n)], texts, strict=True))
            scores = np.array(scorer.score(texts), dtype=float)  # NaN: unscorable (a grade of no words)
            scored = scores[np.isfinite(scores)]
            dist = np.abs(scored - target) / span
            row["alpha"] = mix.report["alpha"][attr]
            interval, se = interval95(scores, len(prompts), args.samples, rng)
            row[mode] = {"achieved": round(float(scored.mean()), 4), "interval95": interval,
                         "se_of_mean_pct": round(100 * se / span, 2),
                         "abs_error_of_mean_pct": round(100 * abs(float(scored.mean()) - target) / span, 2),
                         "mean_abs_error_pct": round(100 * float(dist.mean()), 2),
                         "within_band": round(float((dist <= args.band).mean()), 4),
                         "sd": round(float(scored.std(ddof=1)), 4), "replies": n, "scored": len(scored)}  # fmt: skip
            of = np.repeat(np.array(domains), args.samples)  # each reply's domain: the offset a domain carries
            row[mode]["achieved_by_domain"] = {d: round(float(np.nanmean(scores[of == d])), 4) for d in sorted(set(domains))}
            if last:  # where the loops ended: their mean last alpha and the share at a bound
                lo_a, hi_a = next(iter(mix.feedback.loops.values())).lo, next(iter(mix.feedback.loops.values())).hi
                row[mode]["last_alpha_mean"] = round(float(np.mean(last)), 4)
                row[mode]["last_alpha_at_bound"] = round(float(np.mean([a in (lo_a, hi_a) for a in last])), 4)
            print(f"target {target:+.3f} ({level:.0%}) {mode:6s} achieved {row[mode]['achieved']:+.3f} "
                  f"{row[mode]['interval95']}  |mean err| {row[mode]['abs_error_of_mean_pct']:.1f}% "
                  f"MAE {row[mode]['mean_abs_error_pct']:.1f}%  within {row[mode]['within_band']:.0%}  "
                  f"sd {row[mode]['sd']:.3f}  {t['tokens'] / t['wall_s']:.1f} tok/s", flush=True)
        rows.append(row)
    summary = {}
    for mode in modes:
        tm = timing[mode]
        summary[mode] = {
            "abs_error_of_mean_pct": round(float(np.mean([r[mode]["abs_error_of_mean_pct"] for r in rows])), 2),
            "mean_abs_error_pct": round(float(np.mean([r[mode]["mean_abs_error_pct"] for r in rows])), 2),
            "within_band": round(float(np.mean([r[mode]["within_band"] for r in rows])), 4),
            "sd": round(float(np.mean([r[mode]["sd"] for r in rows])), 4),
            "se_of_mean_pct": round(float(np.mean([r[mode]["se_of_mean_pct"] for r in rows])), 2),
            "means_above_target": sum(r[mode]["achieved"] > r["target"] for r in rows),
            "means_below_target": sum(r[mode]["achieved"] < r["target"] for r in rows),
            "tokens": tm["tokens"], "wall_s": round(tm["wall_s"], 1), "cpu_s": round(tm["cpu_s"], 1),
            "tokens_per_s": round(tm["tokens"] / tm["wall_s"], 1),
            "tokens_per_cpu_s": round(tm["tokens"] / tm["cpu_s"], 1)}  # fmt: skip
        if args.perplexity:
            summary[mode]["base_perplexity"] = round(base_perplexity(engine, replies[mode]), 3)
    if len(modes) == 2:
        summary["closed_vs_open_sd"] = round(summary["closed"]["sd"] / summary["open"]["sd"], 3)
        summary["closed_vs_open_tokens_per_s"] = round(
            summary["closed"]["tokens_per_s"] / summary["open"]["tokens_per_s"], 3)
        summary["closed_vs_open_tokens_per_cpu_s"] = round(
            summary["closed"]["tokens_per_cpu_s"] / summary["open"]["tokens_per_cpu_s"], 3)
    print(json.dumps(summary, indent=1))
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    report = {"anchors": args.anchors, "attribute": attr, "scorer": curve.scorer,
              "calibration": {**{k: doc[k] for k in ("prompts", "sampling")},
                              "curve": {k: doc["curves"][attr].get(k) for k in ("alphas", "fit", "signal", "noise_share")},
                              "partial_model": "partial" in doc["curves"][attr]},
              "modes": list(modes), "reachable": [round(lo, 4), round(hi, 4)],
              "feedback": feedback if "closed" in modes else None, "band_of_range": args.band,
              "extrapolate": args.extrapolate,
              "held_out": {"prompts": f"lerpray openings (shipped), {args.split} indices", "per_domain": args.per_domain,
                           "excluded_domains": args.exclude.split(","), "count": len(prompts),
                           "domains": sorted(set(domains)), "samples": args.samples},
              "sampling": sampling, "batch_slots": args.batch,
              "torch_threads": __import__("torch").get_num_threads(), "loadavg_end": [float(v) for v in loadavg],
              "targets": rows, "summary": summary}  # fmt: skip
    write_json(args.out, report)
    print(f"wrote {args.out}; loadavg {' '.join(loadavg)}")


if __name__ == "__main__":
    main()

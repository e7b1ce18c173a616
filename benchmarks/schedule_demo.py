"""A reply that changes register mid-way: a per-token mix schedule, and the score trace it leaves.

    python benchmarks/schedule_demo.py --anchors /tmp/lerp18/anchors --attribute sentiment --scorer vader \\
        --start 0 --end 1 --until 16 --out benchmarks/results/schedule_demo.json --plot docs/figures/schedule_trace.png
    # with a formality set: --attribute formality --scorer formality-markers --start 1 --end 0  (formal -> casual)

Three runs of the same prompts and seeds through one in-process engine: the attribute held at `start`, held at
`end`, and scheduled (`start` for tokens < until, then `end`), i.e. the HTTP request
{"interpolation": {"schedule": [{"until": U, "mix": {"alpha": {A: start}}}, {"mix": {"alpha": {A: end}}}]}}.
The trace at token i is the scorer on the window of the last `window` generated tokens, averaged over prompts and
seeds; the scheduled run should follow the `start` run, then move to the `end` run's level after `until`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import write_json  # benchmarks/_common.py (the script's folder is on sys.path)

from lerpray.eval.scorers import get_scorer
from lerpray.mixing import AnchorLayout
from lerpray.model import Engine, GenerationRequest, SamplingParams
from lerpray.steering import MixContext, resolve

PROMPTS = (
    "The movie we watched last night was", "My honest review of this phone:", "The food at the new restaurant",
    "Our hotel room for the weekend was", "The concert on Saturday was", "The train ride to the coast was",
    "The laptop arrived yesterday and", "My first week at the new job has been",
)  # fmt: skip


def schedule_for(layout: AnchorLayout, attribute: str, start: float, end: float, until: int, max_tokens: int):
    mix = {"schedule": [{"until": until, "mix": {"alpha": {attribute: start}}}, {"mix": {"alpha": {attribute: end}}}]}
    resolved = resolve(MixContext(layout), interpolation=mix, max_tokens=max_tokens)
    return resolved.coeffs, resolved, mix


def traces(engine: Engine, requests: list[GenerationRequest], scorer, window: int) -> tuple[np.ndarray, dict]:
    """[len(requests), max_tokens] scorer value of the sliding window ending at each token (NaN past the end)."""
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    for event in engine.stream(requests):
        if event.token_id >= 0:
            tokens[event.request_id].append(event.token_id)
    width = max(r.sampling.max_tokens for r in requests)
    out = np.full((len(requests), width), np.nan)
    for row, r in enumerate(requests):
        ids = tokens[r.request_id]
        texts = [engine.tokenizer.decode(ids[max(0, i + 1 - window) : i + 1], skip_special_tokens=True)
                 for i in range(len(ids))]
        out[row, : len(ids)] = scorer.score(texts)
    return out, {r.request_id: engine.tokenizer.decode(tokens[r.request_id], skip_special_tokens=True)
                 for r in requests}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anchors", required=True)
    p.add_argument("--attribute", default="sentiment")
    p.add_argument("--scorer", default="vader")
    p.add_argument("--start", type=float, default=0.0)
    p.add_argument("--end", type=float, default=1.0)
    p.add_argument("--until", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=40)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/schedule_demo.json"))
    p.add_argument("--plot", type=Path, default=Path("docs/figures/schedule_trace.png"))
    args = p.parse_args()

    engine = Engine.from_uri(args.anchors, max_batch_size=64)
    scorer = get_scorer(args.scorer)
    coeffs, schedule, mix = schedule_for(engine.layout, args.attribute, args.start, args.end, args.until,
                                         args.max_tokens)  # fmt: skip
    constant = {name: resolve(MixContext(engine.layout), interpolation={"alpha": {args.attribute: a}}).coeffs
                for name, a in (("start", args.start), ("end", args.end))}  # fmt: skip
    runs = {"start": (constant["start"], None), "end": (constant["end"], None), "scheduled": (coeffs, schedule)}
    requests, keys = [], []
    for name, (c, sched) in runs.items():
        for i, prompt in enumerate(PROMPTS):
            for seed in range(args.seeds):
                # ignore_eos: every reply runs max_tokens, so each token index averages every prompt and seed
                params = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=args.max_tokens, seed=seed,
                                        ignore_eos=True)
                rid = f"{name}/{i}/{seed}"
                requests.append(GenerationRequest(coeffs=c, prompt=prompt, sampling=params, request_id=rid,
                                                  mix=sched))  # fmt: skip
                keys.append(name)
    scores, texts = traces(engine, requests, scorer, args.window)
    mean = {name: np.nanmean(scores[[k == name for k in keys]], axis=0) for name in runs}
    result = {"anchors": args.anchors, "attribute": args.attribute, "scorer": args.scorer, "window": args.window,
              "interpolation": mix, "prompts": len(PROMPTS), "seeds": args.seeds,
              "trace": {k: [None if np.isnan(v) else round(float(v), 4) for v in m] for k, m in mean.items()},
              "examples": {k: texts[f"{k}/0/0"] for k in runs}}  # fmt: skip
    write_json(args.out, result)
    plot(mean, args)
    print(json.dumps(result["examples"], indent=1))
    print(f"wrote {args.out} and {args.plot}")


def plot(mean: dict[str, np.ndarray], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(1, len(mean["scheduled"]) + 1)
    ax.plot(x, mean["start"], color="tab:blue", ls=":", lw=2, label=f"alpha {args.start:g} throughout")
    ax.plot(x, mean["end"], color="tab:orange", alpha=0.6, label=f"alpha {args.end:g} throughout")
    ax.plot(x, mean["scheduled"], color="black", lw=1.5, alpha=0.8, label=f"schedule: {args.start:g} until {args.until}, then "
            f"{args.end:g}")  # fmt: skip
    ax.axvline(args.until + 0.5, color="grey", ls="--")
    ax.set_xlabel("generated token")
    ax.set_ylabel(f"{args.scorer} of the last {args.window} tokens")
    ax.set_title(f"{args.attribute}: a per-token schedule ({len(PROMPTS)} prompts x {args.seeds} seeds, mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()

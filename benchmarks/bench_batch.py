"""Batch throughput: the Ray Data pipeline (lerpray.batch.pipeline) vs the in-process engine on the same prompts x
mixes.

    python benchmarks/bench_batch.py                       # tiny random Llama, 2-CPU local Ray (~1-2 min)
    python benchmarks/bench_batch.py --model bundled --prompts 16 --max-tokens 32   # SmolLM2-135M, random anchors

Workload: --prompts prompts x --mixes mixes (alpha of one attribute spread over [0, 1]), greedy, --max-tokens new
tokens per row. The same plan (lerpray.batch.plan.plan_rows) feeds both sides, so both generate the same requests.

    in-process   Engine.from_uri once, then engine.generate(all requests) with max_batch_size = --batch-size
                 (continuous batching); load and generate timed separately; run before and after the pipeline
                 runs, since the load of a shared machine drifts (each entry records the 1-minute load average).
    pipeline     run_batch on a local Ray cluster (ray.init(num_cpus=--cpus)) for each --actors value, each actor
                 with --cpus / actors CPUs; end to end: reading the prompts, actor start-up and model load, the
                 generation, the Parquet write and the read-back check.

tokens/s = completion tokens / seconds. Inside the pipeline each actor also logs its model load and its
generate() time, which splits the end-to-end time into the engine's work and the pipeline's own cost. Bounded: everything is sized by the flags (no open-ended loops).
Writes benchmarks/results/batch.json (batch_bundled.json with --model bundled; or --out).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine_description, write_json  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("tiny", "bundled"), default="tiny", help="bundled = SmolLM2-135M-Instruct")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--mixes", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="actor-pool sizes to run")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster, shared by the actors")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the in-process engine (1: on a busy "
                   "2-core machine two OpenMP threads ran the tiny model ~10x slower than one)")
    p.add_argument("--out", default=None, help="default: results/batch.json (tiny), results/batch_bundled.json")
    return p.parse_args(argv)


def build_anchor_set(model: str, root: Path) -> Path:
    """A published anchor set whose manifest names a local base-model folder (actors load it by path)."""
    if model == "tiny":
        from lerpray.testing import tiny_anchor_set

        return tiny_anchor_set(root)
    from lerpray.anchors import build_anchor_set as publish
    from lerpray.model.base import bundled_model_dir, load_base_model, model_identity
    from lerpray.testing import random_adapter

    base = bundled_model_dir()
    base_model, _ = load_base_model(str(base))
    adapters = {name: random_adapter(base_model, root / "adapters" / name, r=8, lora_alpha=16.0, seed=i + 1)
                for i, name in enumerate(("sentiment.positive", "sentiment.negative"))}
    publish(model_identity(base_model, str(base)), adapters, str(root / "anchors"))
    return root / "anchors"


class TimedEngine:
    """The pipeline's engine, with its load and generate() times appended to a file per actor process."""

    def __init__(self, log_dir: str, **engine_kwargs) -> None:
        from lerpray.batch.pipeline import load_engine

        start = time.perf_counter()
        self.engine = load_engine(**engine_kwargs)
        self.log = Path(log_dir) / f"{os.getpid()}.jsonl"
        self._write({"load_s": time.perf_counter() - start})

    def generate(self, requests):
        start = time.perf_counter()
        results = self.engine.generate(requests)
        self._write({"generate_s": time.perf_counter() - start, "tokens": sum(r.completion_tokens for r in results)})
        return results

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def _write(self, record: dict) -> None:
        with self.log.open("a") as f:
            f.write(json.dumps(record) + "\n")


def actor_times(log_dir: Path) -> dict:
    """Per actor process: model load and busy generate() seconds (actors run in parallel: max is the wall share)."""
    per_actor = []
    for log in sorted(log_dir.glob("*.jsonl")):
        records = [json.loads(line) for line in log.read_text().splitlines()]
        per_actor.append({"load_s": sum(r.get("load_s", 0.0) for r in records),
                          "generate_s": sum(r.get("generate_s", 0.0) for r in records),
                          "tokens": sum(r.get("tokens", 0) for r in records)})
    busiest = max(a["generate_s"] for a in per_actor)
    return {"actor_processes": len(per_actor), "max_load_s": round(max(a["load_s"] for a in per_actor), 2),
            "max_generate_s": round(busiest, 2),
            "tokens_per_s_generate": round(sum(a["tokens"] for a in per_actor) / busiest, 1)}


def in_process(anchors: Path, plan: list[dict], batch_size: int, max_tokens: int) -> dict:
    import torch

    from lerpray.batch.pipeline import load_engine
    from lerpray.model.requests import GenerationRequest
    from lerpray.model.sampling import SamplingParams

    start = time.perf_counter()
    engine = load_engine(str(anchors), None, device="cpu", dtype="float32", max_batch_size=batch_size)
    load_s = time.perf_counter() - start
    requests = [GenerationRequest(coeffs=tuple(r["coefficients"]), prompt=r["prompt"], request_id=str(i),
                                  sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=r["seed"]))
                for i, r in enumerate(plan)]
    start = time.perf_counter()
    results = engine.generate(requests)
    generate_s = time.perf_counter() - start
    tokens = sum(r.completion_tokens for r in results)
    return {"loadavg_1m": os.getloadavg()[0], "rows": len(results), "completion_tokens": tokens,
            "load_s": round(load_s, 2),
            "generate_s": round(generate_s, 2), "tokens_per_s_generate": round(tokens / generate_s, 1),
            "tokens_per_s_with_load": round(tokens / (load_s + generate_s), 1), "torch_threads": torch.get_num_threads()}


def pipeline(anchors: Path, prompts: Path, mixes: list[dict], args, actors: int, out: Path) -> dict:
    from lerpray.batch.config import parse_batch_config
    from lerpray.batch.pipeline import run_batch

    config = parse_batch_config({
        "anchors": str(anchors), "input": {"paths": str(prompts)}, "mixes": mixes,
        "sampling": {"temperature": 0.0, "max_tokens": args.max_tokens},
        "resources": {"num_actors": actors, "batch_size": args.batch_size, "num_cpus_per_actor": args.cpus / actors},
        "output": {"path": str(out)}, "progress": False,
    })
    log_dir = out.with_name(out.name + "-times")
    log_dir.mkdir()
    summary = run_batch(config, engine_factory=functools.partial(TimedEngine, str(log_dir)))
    if not summary.complete:
        raise SystemExit(f"incomplete pipeline output: {summary}")
    return {"loadavg_1m": os.getloadavg()[0], "actors": actors, "cpus_per_actor": args.cpus / actors,
            "rows": summary.written_rows, "completion_tokens": summary.completion_tokens,
            "seconds": round(summary.seconds, 2), "tokens_per_s": round(summary.tokens_per_s, 1),
            "inside_actors": actor_times(log_dir)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out or str(HERE / "results" / ("batch.json" if args.model == "tiny" else "batch_bundled.json"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    from lerpray.anchors import open_store, read_manifest
    from lerpray.batch.plan import plan_rows
    from lerpray.steering import MixContext

    torch.set_num_threads(args.threads)
    machine = machine_description("cpu")
    mixes = [{"alpha": {"sentiment": i / max(args.mixes - 1, 1)}} for i in range(args.mixes)]
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        root = Path(tmp)
        anchors = build_anchor_set(args.model, root)
        prompts = root / "prompts.jsonl"
        lines = [{"prompt": f"Prompt {i}: a short note about topic number {i}"} for i in range(args.prompts)]
        prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        plan = plan_rows(lines, MixContext(read_manifest(open_store(str(anchors))).layout()), grid=mixes)
        local = [in_process(anchors, plan, args.batch_size, args.max_tokens)]
        print(f"in-process: {local[-1]}", flush=True)
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            runs = []
            for n in args.actors:
                runs.append(pipeline(anchors, prompts, mixes, args, n, root / f"out-{n}"))
                print(f"pipeline: {runs[-1]}", flush=True)
        finally:
            ray.shutdown()
        local.append(in_process(anchors, plan, args.batch_size, args.max_tokens))  # again: load drifts
        print(f"in-process: {local[-1]}", flush=True)
    payload = {
        "benchmark": "batch", "model": args.model, "machine": machine,
        "workload": {"prompts": args.prompts, "mixes": args.mixes, "rows": len(plan), "max_tokens": args.max_tokens,
                     "batch_size": args.batch_size, "greedy": True, "ray_cpus": args.cpus,
                     "in_process_threads": args.threads},
        "in_process": local, "pipeline": runs,
        "notes": "pipeline seconds are end to end (read, actor start + model load, generate, write, verify); "
                 "inside_actors: the busiest actor's generate() seconds and the tokens/s over them; in_process runs "
                 "before and after the pipeline runs (load drift on a shared machine)",
    }
    print(f"wrote {write_json(args.out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Core interpolation benchmark: lerpray's per-row stacked LoRA vs the base model and one-mix-at-a-time methods.

    python benchmarks/bench_core.py                 # full CPU run (SmolLM2-135M fp32; minutes) -> results/core.json
    python benchmarks/bench_core.py --quick         # smoke run on a tiny random Llama (< 30 s)
    PYTHONPATH=. python3 benchmarks/gpu_core.py     # GPU: ~1B random Llama in bf16 -> results/gpu/core_gpu.json

Workload: K=10 anchors, r=32, lora_alpha=16 on q,k,v,o; N requests each with its own mix; 32 prompt
tokens, 32 new tokens, greedy. Methods and the shared decode loop: see core_methods.py. Repeats are interleaved
across methods (so load drifts hit them alike) after a full-length warm-up of each; medians are reported. RSS
growth over 1,000 distinct mixes runs in a fresh subprocess (CPU) so the denominator is a serving process, not this
one with its extra model copies.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine_description, write_json
from core_methods import BATCHED, METHODS, PER_MIX, run
from core_report import plot_throughput, print_table, summarise
from core_workload import MODELS, build_workload, make_model, make_prompts

HERE = Path(__file__).resolve().parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUICK = dict(model="tiny", rank=4, batches=[4, 8], per_mix_batches=[4], prompt_tokens=8, new_tokens=4, repeats=1,
             ttft_trials=3, rss_mixes=32, rss_batch=8, rss_in_process=True, plot="",
             out=str(Path(tempfile.gettempdir()) / "lerpray-bench" / "core_quick.json"))  # smoke: not a result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random Llama, small sizes: a seconds-long smoke run")
    p.add_argument("--model", choices=MODELS, default="bundled", help="bundled = SmolLM2-135M-Instruct")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads on CPU, same for every method (default 1: on a shared CPU, intra-op "
                   "threads spin against other processes; 2 threads measured ~10x slower per step under load here)")
    p.add_argument("--anchors", type=int, default=10)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--alpha", type=float, default=16.0, help="lora_alpha of every anchor")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 32], help="batch sizes of the batched methods")
    p.add_argument("--per-mix-batches", type=int, nargs="*", default=[16],
                   help="workload sizes (mixes) for the one-mix-at-a-time methods")
    p.add_argument("--per-mix-sample", type=int, default=None,
                   help="run only this many of the mixes per-mix and scale the wall time (documented in the JSON)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method; the median is reported")
    p.add_argument("--per-mix-repeats", type=int, default=None,
                   help="timed runs of per-mix methods (default --repeats)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no further repeat round once the timed runs took this long (>= 1 run each)")
    p.add_argument("--ttft-trials", type=int, default=15)
    p.add_argument("--rss-mixes", type=int, default=1000, help="0 skips the memory measurement")
    p.add_argument("--rss-batch", type=int, default=32)
    p.add_argument("--rss-prompt-tokens", type=int, default=8)
    p.add_argument("--rss-new-tokens", type=int, default=2)
    p.add_argument("--rss-in-process", action="store_true", help="measure memory here, not in a fresh process")
    p.add_argument("--profile", action="store_true", help="write torch.profiler tables of one base/lerpray decode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "core.json"))
    p.add_argument("--plot", default=str(HERE.parent / "docs" / "figures" / "core_throughput.png"),
                   help="PNG of tokens/s per method ('' to skip; needs matplotlib)")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)  # internal: JSON config of the child
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if p.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    args.per_mix_repeats = args.per_mix_repeats or args.repeats
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        return _rss_child(json.loads(args.rss_child))
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    machine = machine_description(args.device)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lerpray-bench-") as tmp:
        w = build_workload(
            args.model, num_anchors=args.anchors, rank=args.rank, lora_alpha=args.alpha,
            max_requests=max([*args.batches, *args.per_mix_batches]), prompt_tokens=args.prompt_tokens,
            device=args.device, dtype=DTYPES[args.dtype], workdir=Path(tmp), seed=args.seed,
        )
        print(f"workload built in {time.perf_counter() - began:.1f} s; machine: {machine['cpu_model']}, "
              f"load {machine['loadavg_1_5_15']}", flush=True)
        runs = _timed_runs(args, w)
        from core_measure import measure_ttft, profile_decode

        errors: dict[str, str] = {}
        ttft = _stage("ttft", errors, lambda: measure_ttft(w, args.ttft_trials, args.seed))
        memory = _stage("memory", errors, lambda: _memory(args, w)) if args.rss_mixes > 0 else None
        if args.profile:
            out = Path(args.out).with_name(Path(args.out).stem + "_profile.txt")
            _stage("profile", errors, lambda: profile_decode(w, max(args.batches), min(args.new_tokens, 8), out))
    machine["loadavg_after_1_5_15"] = machine_description(args.device)["loadavg_1_5_15"]
    report = summarise(args, machine, runs, ttft, memory, time.perf_counter() - began)
    report["errors"] = errors
    print_table(report)
    print(f"wrote {write_json(args.out, report)}")
    if args.plot:
        print(plot_throughput(report, Path(args.plot)) or "matplotlib missing: no plot")
    return 0


def _timed_runs(args: argparse.Namespace, w) -> dict[tuple[str, int], list]:
    """Warm every (method, size) once at full length, then interleaved rounds; returns the runs per key.

    The warm-up decodes all `new_tokens` so that every shape (batch size x KV length) has been run once before the
    clock starts: on a GPU, first use of a shape costs far more than the step itself. Each round starts one method
    later than the previous one, so no method is always the first after a slow one.
    """
    plan = [(m, b) for b in args.batches for m in BATCHED if m in args.methods]
    plan += [(m, b) for b in args.per_mix_batches for m in PER_MIX if m in args.methods]
    for method, size in plan:
        run(method, w, 1 if method in PER_MIX else size, new_tokens=args.new_tokens)
    runs: dict[tuple[str, int], list] = {key: [] for key in plan}
    start = time.perf_counter()
    for rep in range(max(args.repeats, args.per_mix_repeats)):
        if rep > 0 and args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            print(f"--budget-s {args.budget_s} reached after {rep} round(s): no more repeats", flush=True)
            break
        shift = rep % len(plan)
        for method, size in plan[shift:] + plan[:shift]:
            per_mix = method in PER_MIX
            if rep >= (args.per_mix_repeats if per_mix else args.repeats):
                continue
            n = min(args.per_mix_sample or size, size) if per_mix else size
            result = run(method, w, n, args.new_tokens)
            runs[(method, size)].append((result, n))
            print(f"[{rep + 1}] {method:17s} n={size:3d} {result.wall_s * size / n:8.2f} s "
                  f"{result.generated / result.wall_s:8.1f} tok/s", flush=True)
    return runs


def _stage(name: str, errors: dict[str, str], fn):
    """Run one measurement after the timed runs; a failure is recorded, not fatal (the JSON is still written)."""
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 - report any failure of an optional stage, keep the timings
        errors[name] = f"{type(err).__name__}: {err}"
        print(f"{name} failed: {errors[name]}", file=sys.stderr, flush=True)
        return None
    print(f"{name}: {result if isinstance(result, Path) else 'done'}", flush=True)
    return result


def _memory(args: argparse.Namespace, w) -> dict:
    config = dict(model=args.model, device=args.device, dtype=args.dtype, threads=args.threads, seed=args.seed,
                  adapters={k: str(v) for k, v in w.adapter_dirs.items()}, mixes=args.rss_mixes,
                  batch=args.rss_batch, prompt_tokens=args.rss_prompt_tokens, new_tokens=args.rss_new_tokens)
    if args.rss_in_process:
        memory = _serve_mixes(config, w.imodel, w.tokenizer)
        return {**memory, "process": "this benchmark process (also holds the base and PEFT copies)"}
    proc = subprocess.run([sys.executable, __file__, "--rss-child", json.dumps(config)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process": "fresh process: base + anchors + engine"}


def _rss_child(config: dict) -> int:
    from lerpray.model.interpolated import interpolate
    from lerpray.testing import anchor_set_from_adapters

    if torch.device(config["device"]).type == "cpu":
        torch.set_num_threads(config["threads"])
    base, tokenizer, _ = make_model(config["model"], config["device"], DTYPES[config["dtype"]], config["seed"])
    dirs = {name: Path(folder) for name, folder in config["adapters"].items()}
    imodel = interpolate(base, anchor_set_from_adapters(base, dirs, base_name=config["model"]))
    print(json.dumps(_serve_mixes(config, imodel, tokenizer)))
    return 0


def _serve_mixes(config: dict, imodel, tokenizer) -> dict:
    from core_measure import measure_memory

    prompts = make_prompts(tokenizer, config["batch"], config["prompt_tokens"], config["model"] != "bundled",
                           config["seed"] + 3)
    return measure_memory(imodel, tokenizer, prompts, mixes=config["mixes"], batch=config["batch"],
                          new_tokens=config["new_tokens"], device=torch.device(config["device"]),
                          seed=config["seed"])


if __name__ == "__main__":
    sys.exit(main())

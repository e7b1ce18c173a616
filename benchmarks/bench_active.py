"""Cost by active anchors: engine throughput with many anchors loaded and two used per row, against an engine that
holds only two anchors.

    python benchmarks/bench_active.py --threads 2          # SmolLM2-135M fp32 on the CPU -> results/active.json
    python benchmarks/bench_active.py --quick              # smoke run on a tiny random Llama (seconds)
    python benchmarks/bench_active.py --gpu                # ~1B Llama shape, bf16, CUDA graphs -> results/gpu/
                                                           # active_gpu.json (gpu_core.py runs it)

Workload: K random rank-8 LoRAs (lora_alpha 16, q,k,v,o) loaded, K in --anchors; N rows (--batches), each mixing two
anchors with random non-zero weights; 8-token prompts, 32 new tokens (--new-tokens), greedy, through Engine.stream. Two spreads:
"same2", every row on anchors {0, 1}; "8sets", rows spread round-robin over 8 different pairs ({2i, 2i+1} of the
first 16 anchors; with K = 8, the pairs {i, i+1 mod 8}). The reference is the engine holding only anchors {0, 1}
(K = 2) with every row mixing both. "full" runs K = 128 without gathering (interpolate(gather_active=False)): every
loaded anchor's columns on every row, the cost before gathering.

Bound of the union design: a step runs the rank columns of the union of its rows' anchors, for every row. With all
rows on one pair that is 2 anchors' columns (the reference's cost); with 8 pairs it is 16 anchors' columns (8 with
K = 8), whatever K: the 8-set case costs what a 16-anchor engine costs with every anchor used. Repeats are
interleaved across configurations (load drift hits all alike); medians are reported.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import machine_description, median, write_json
from core_workload import anchor_names, build_peft, make_model, make_prompts

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random Llama, few anchors: a smoke run")
    p.add_argument("--gpu", action="store_true", help="~1B Llama shape in bf16 on CUDA: 2 vs 32 anchors loaded")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--anchors", type=int, nargs="+", default=[2, 8, 32, 128])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32, help="(the CPU run quoted in docs used 8: a loaded host)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=240.0, help="start no repeat round after this many seconds")
    p.add_argument("--out", default=str(HERE / "results" / "active.json"))
    args = p.parse_args(argv)
    args.device, args.dtype, args.kv_cache_bytes = "cpu", torch.float32, 128 << 20
    if args.quick:
        args.model, args.anchors, args.batches, args.new_tokens, args.repeats = "tiny", [2, 8, 32], [8], 4, 1
        args.out = str(Path(tempfile.gettempdir()) / "lerpray-bench" / "active_quick.json")
    elif args.gpu:  # the GPU target: 32 anchors loaded, 2 used per row, against the engine holding those 2
        args.model, args.device, args.dtype, args.kv_cache_bytes = "llama1b", "cuda", torch.bfloat16, 2 << 30
        args.anchors, args.batches, args.rank, args.new_tokens, args.repeats = [2, 32], [16, 64], 16, 64, 3
        args.out = str(HERE / "results" / "gpu" / "active_gpu.json")
    else:
        args.model = "bundled"
    return args


def pairs(spread: str, num_anchors: int) -> list[tuple[int, int]]:
    """The anchor pairs rows use, round-robin: one pair, or 8 different ones."""
    if spread == "same2":
        return [(0, 1)]
    if num_anchors >= 16:
        return [(2 * i, 2 * i + 1) for i in range(8)]
    return [(i, (i + 1) % num_anchors) for i in range(num_anchors)]


def row_mixes(n: int, num_anchors: int, spread: str, seed: int) -> list[tuple[float, ...]]:
    """n coefficient rows [K]: row i mixes its pair with weights in [0.2, 1.0)."""
    gen = torch.Generator().manual_seed(seed)
    mixes = []
    for i in range(n):
        coeffs = [0.0] * num_anchors
        for k in pairs(spread, num_anchors)[i % len(pairs(spread, num_anchors))]:
            coeffs[k] = 0.2 + 0.8 * float(torch.rand(1, generator=gen))
        mixes.append(tuple(coeffs))
    return mixes


def random_adapters(base, names: list[str], rank: int, workdir: Path) -> dict[str, Path]:
    """One PEFT adapter folder per name: PEFT saves the first (q,k,v,o, lora_alpha 16), the others are copies with
    fresh random factors of the same keys, shapes and spread (PEFT's add_adapter is quadratic in the adapters held:
    128 of them took over 10 minutes on a loaded 2-core CPU)."""
    from safetensors.torch import load_file, save_file

    peft_name = names[0].replace(".", "_")  # PEFT names cannot hold dots; a named adapter saves to <dir>/<name>
    build_peft(copy.deepcopy(base), [peft_name], rank, 16.0, seed=0).save_pretrained(str(workdir / "peft"))
    dirs = {names[0]: workdir / "peft" / peft_name}
    template = load_file(str(dirs[names[0]] / "adapter_model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    for name in names[1:]:
        dirs[name] = workdir / name
        shutil.copytree(dirs[names[0]], dirs[name])
        weights = {key: torch.randn(t.shape, generator=gen) * t.float().std() for key, t in template.items()}
        save_file(weights, str(dirs[name] / "adapter_model.safetensors"))
    return dirs


def time_engine(engine, prompts: list[str], mixes: list[tuple[float, ...]], new_tokens: int) -> tuple[float, float]:
    """Generated tokens per wall second and per CPU second (this process, all threads) of one Engine.stream over
    these rows, prefill included. On a shared, loaded CPU the CPU-time rate is the steadier measure of work."""
    from lerpray.model import GenerationRequest, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    requests = [GenerationRequest(coeffs=mix, prompt=prompt, sampling=params, request_id=str(i))
                for i, (prompt, mix) in enumerate(zip(prompts, mixes, strict=True))]
    start, cpu = time.perf_counter(), time.process_time()
    generated = sum(1 for _ in engine.stream(requests))
    return generated / (time.perf_counter() - start), generated / (time.process_time() - cpu)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from lerpray.model import Engine
    from lerpray.model.interpolated import interpolate
    from lerpray.testing import anchor_set_from_adapters

    machine = machine_description(args.device)
    base, tokenizer, synthetic = make_model(args.model, args.device, args.dtype)
    top = max(args.anchors)
    names = anchor_names(top)
    workdir = Path(tempfile.mkdtemp(prefix="lerpray-active-"))
    dirs = random_adapters(base, names, args.rank, workdir)
    prompts = make_prompts(tokenizer, max(args.batches), args.prompt_tokens, synthetic, seed=0)
    context = args.prompt_tokens + args.new_tokens + 8

    imodels: dict[tuple[int, bool], object] = {}  # one model copy per (K, gather), shared by its engines
    engines: dict[tuple[int, int, bool], Engine] = {}

    def engine(k: int, n: int, gather: bool = True) -> Engine:
        if (k, gather) not in imodels:
            anchors = anchor_set_from_adapters(base, {name: dirs[name] for name in names[:k]}, base_name=args.model)
            imodels[k, gather] = interpolate(copy.deepcopy(base), anchors, merge_cache_size=0, gather_active=gather)
        if (k, n, gather) not in engines:
            engines[k, n, gather] = Engine(imodels[k, gather], tokenizer, max_batch_size=n, context_length=context,
                                           kv_cache_bytes=args.kv_cache_bytes)
        return engines[k, n, gather]

    configs = []  # (name, K, spread, batch, engine factory)
    for n in args.batches:
        configs.append(("reference", 2, "same2", n, lambda n=n: engine(2, n)))
        for k in args.anchors:
            if k == 2:
                continue
            for spread in ("same2", "8sets"):
                configs.append(("gathered", k, spread, n, lambda k=k, n=n: engine(k, n)))
        configs.append(("full", top, "same2", n, lambda n=n: engine(top, n, gather=False)))
    times: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(configs))}
    started = time.perf_counter()
    for repeat in range(args.repeats):
        if repeat and time.perf_counter() - started > args.budget_s:
            break
        for i, (name, k, spread, n, make) in enumerate(configs):
            eng = make()
            mixes = row_mixes(n, k, spread, seed=n)
            if repeat == 0:
                time_engine(eng, prompts[:n], mixes, 2)  # warm-up: allocations, gathered layout
            times[i].append(time_engine(eng, prompts[:n], mixes, args.new_tokens))
            print(f"{name:9s} K={k:3d} {spread:5s} N={n:2d}: {times[i][-1][0]:7.1f} tok/s wall, "
                  f"{times[i][-1][1]:7.1f} tok/s CPU", flush=True)
    rows = []
    for i, (name, k, spread, n, _) in enumerate(configs):
        ref = next(j for j, c in enumerate(configs) if c[0] == "reference" and c[3] == n)
        wall, cpu = median([t[0] for t in times[i]]), median([t[1] for t in times[i]])
        union = 2 if spread == "same2" else 2 * len(pairs(spread, k)) if k >= 16 else k
        rows.append({"method": name, "anchors_loaded": k, "spread": spread, "batch": n,
                     "tokens_per_s_wall": wall, "tokens_per_cpu_s": cpu, "runs_wall_cpu": times[i],
                     "vs_reference_wall": wall / median([t[0] for t in times[ref]]),
                     "vs_reference_cpu": cpu / median([t[1] for t in times[ref]]),
                     "union_anchors_per_step": k if name == "full" else union})
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    payload = {"machine": machine, "benchmark": "active_anchors", "model": args.model, "threads": args.threads,
               "device": args.device, "dtype": str(args.dtype),
               "loadavg_at_end": loadavg, "rank": args.rank, "prompt_tokens": args.prompt_tokens,
               "new_tokens": args.new_tokens, "repeats_done": len(times[0]), "wall_s": time.perf_counter() - started,
               "results": rows}
    print(f"wrote {write_json(args.out, payload)} (load average {' '.join(loadavg)})")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

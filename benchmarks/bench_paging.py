"""Anchors paged by use: 64 anchor sets of 2 anchors on one base model, an engine with room for 16 anchors (8 sets),
and a request stream over all 64 sets through the serving batcher (lerpray/serve/batcher.py, no Ray).

    OMP_NUM_THREADS=1 python benchmarks/bench_paging.py --threads 1   # SmolLM2-135M fp32 -> results/paging.json
    python benchmarks/bench_paging.py --quick                         # tiny random Llama: a smoke run (seconds)

Workload: 64 sets x 2 random rank-8 LoRAs (lora_alpha 16, q,k,v,o) held in host memory; `--clients` closed-loop
clients each send requests back to back, the set of each request drawn uniformly at random from the 64 (seeded:
the worst case for a cache of 8 sets), every row mixing its set's two anchors with random non-zero weights; 8-token
prompts, `--new-tokens` new tokens, greedy. A warm-up stream fills the pool first, then the timed stream runs.
The same stream runs on the same engine type with room for all 128 anchors, every set placed before the stream (no
paging): the reference.

Reports: failed requests (must be 0), page-ins, evictions, seconds per page-in (the copy into the slots), the time
to first token of requests whose set had to be paged in against those whose set was resident, and the stream's
generated tokens per second, paged against all resident.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import machine_description, median, write_json
from bench_active import random_adapters
from core_workload import make_model, make_prompts

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random Llama, a short stream: a smoke run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sets", type=int, default=64)
    p.add_argument("--capacity", type=int, default=16, help="anchors resident at once")
    p.add_argument("--requests", type=int, default=128, help="requests in the timed stream")
    p.add_argument("--clients", type=int, default=8, help="concurrent closed-loop clients (= engine batch slots)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--out", default=str(HERE / "results" / "paging.json"))
    args = p.parse_args(argv)
    args.model = "tiny" if args.quick else "bundled"
    if args.quick:
        args.requests = 48
        args.out = str(Path(tempfile.gettempdir()) / "lerpray-bench" / "paging_quick.json")
    return args


def build_engine(base, tokenizer, sets, capacity: int, slots: int, context: int):
    from lerpray.model import Engine
    from lerpray.model.anchor_pool import build_pool
    from lerpray.model.paged_engine import PagedEngine

    pool = build_pool(copy.deepcopy(base), sets, capacity)
    return PagedEngine(Engine(pool.imodel, tokenizer, max_batch_size=slots, context_length=context,
                              kv_cache_bytes=128 << 20), pool)  # fmt: skip


def make_stream(count: int, num_sets: int, prompts: list[str], seed: int) -> list[tuple[str, str, tuple]]:
    """(set, prompt, its two coefficients) per request, sets uniform at random."""
    rng = random.Random(seed)
    return [(f"s{rng.randrange(num_sets)}", prompts[i % len(prompts)], (rng.uniform(0.2, 1), rng.uniform(0.2, 1)))
            for i in range(count)]  # fmt: skip


async def run_stream(engine, stream, clients: int, new_tokens: int, tag: str) -> dict:
    """Every request of `stream` through a Batcher over `engine`, `clients` at a time; per request its TTFT, whether
    its set was paged in when it was admitted, and any error."""
    from lerpray.model import GenerationRequest, SamplingParams
    from lerpray.serve.batcher import Batcher

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    paged_in: dict[str, bool] = {}
    add = engine.add

    def add_and_note(request) -> None:  # which admissions paged their set in
        paged_in[request.request_id] = request.anchor_set not in engine.pool.resident
        add(request)

    engine.add = add_and_note
    steps: list[int] = []  # rows in flight per engine step (a waiting set leaves slots idle)

    class Observer:
        def on_step(self, batch_size: int, tokens: int) -> None:
            steps.append(batch_size)

        def on_admit(self, queue_s: float) -> None: ...
        def on_first_token(self, ttft_s: float) -> None: ...

    batcher = Batcher(engine, max_batch_size=clients, max_queue=len(stream), observer=Observer())
    batcher.start()
    queue, records = list(enumerate(stream)), []

    async def client() -> None:
        while queue:
            i, (name, prompt, coeffs) = queue.pop(0)
            request = GenerationRequest(coeffs=coeffs, prompt=prompt, sampling=params, request_id=f"{tag}{i}",
                                        anchor_set=name)  # fmt: skip
            start, first, tokens, error = time.perf_counter(), None, 0, None
            try:
                async for events in batcher.submit(request):
                    first = first or time.perf_counter()
                    tokens += sum(e.token_id >= 0 for e in events)
            except Exception as err:  # counted: the benchmark's point is that there are none
                error = repr(err)
            records.append({"id": request.request_id, "set": name, "ttft_s": (first or start) - start,
                            "tokens": tokens, "error": error})  # fmt: skip

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    batcher.close()
    engine.add = add
    for record in records:
        record["paged_in"] = paged_in.get(record["id"], False)
    return {"wall_s": wall, "cpu_s": cpu, "records": records, "rows_per_step": sum(steps) / max(len(steps), 1)}


def summary(run: dict, stats_before, stats_after) -> dict:
    records = run["records"]
    hit = [r["ttft_s"] for r in records if not r["paged_in"] and r["error"] is None]
    miss = [r["ttft_s"] for r in records if r["paged_in"] and r["error"] is None]
    page_ins = stats_after.page_ins - stats_before.page_ins
    return {
        "requests": len(records), "failed": sum(r["error"] is not None for r in records),
        "errors": sorted({r["error"] for r in records if r["error"]})[:3],
        "tokens": sum(r["tokens"] for r in records), "wall_s": run["wall_s"],
        "tokens_per_s": sum(r["tokens"] for r in records) / run["wall_s"], "cpu_s": run["cpu_s"],
        "tokens_per_cpu_s": sum(r["tokens"] for r in records) / run["cpu_s"], "rows_per_step": run["rows_per_step"],
        "page_ins": page_ins, "evictions": stats_after.evictions - stats_before.evictions,
        "load_s_per_page_in": (stats_after.load_s - stats_before.load_s) / page_ins if page_ins else None,
        "requests_paging_in": len(miss), "requests_resident": len(hit),
        "ttft_s_median_paging_in": median(miss) if miss else None, "ttft_s_median_resident": median(hit) if hit else None,
        "ttft_s_max_paging_in": max(miss) if miss else None,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from lerpray.testing import anchor_set_from_adapters

    machine = machine_description("cpu")
    base, tokenizer, synthetic = make_model(args.model, "cpu", torch.float32)
    workdir = Path(tempfile.mkdtemp(prefix="lerpray-paging-"))
    names = [f"a{i}.{pole}" for i in range(args.sets) for pole in ("high", "low")]
    dirs = random_adapters(base, names, args.rank, workdir)
    sets = {f"s{i}": anchor_set_from_adapters(base, {f"x.{p}": dirs[f"a{i}.{p}"] for p in ("high", "low")},
                                              base_name=args.model) for i in range(args.sets)}  # fmt: skip
    prompts = make_prompts(tokenizer, 16, args.prompt_tokens, synthetic, seed=0)
    context = args.prompt_tokens + args.new_tokens + 8
    warm = make_stream(args.clients * 2, args.sets, prompts, seed=1)
    stream = make_stream(args.requests, args.sets, prompts, seed=2)
    results = {}
    for label, capacity in (("paged", args.capacity), ("all_resident", 2 * args.sets)):
        engine = build_engine(base, tokenizer, sets, capacity, args.clients, context)
        if label == "all_resident":  # every set in place before any request: the reference never pages
            for name in sets:
                engine.pool.place(name)
        asyncio.run(run_stream(engine, warm, args.clients, args.new_tokens, "w"))
        before = copy.deepcopy(engine.pool.stats)
        run = asyncio.run(run_stream(engine, stream, args.clients, args.new_tokens, "r"))
        results[label] = {"capacity_anchors": capacity, **summary(run, before, engine.pool.stats)}
        print(f"{label}: {results[label]['tokens_per_s']:.1f} tok/s, {results[label]['failed']} failed, "
              f"{results[label]['page_ins']} page-ins, {results[label]['rows_per_step']:.1f} rows/step", flush=True)
        engine.close()
    paged, ref = results["paged"], results["all_resident"]
    paged["vs_all_resident"] = paged["tokens_per_s"] / ref["tokens_per_s"]
    paged["vs_all_resident_cpu"] = paged["tokens_per_cpu_s"] / ref["tokens_per_cpu_s"]
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    payload = {"machine": machine, "benchmark": "paging", "model": args.model, "threads": args.threads,
               "loadavg_at_end": loadavg, "sets": args.sets, "anchors_per_set": 2, "rank": args.rank,
               "clients": args.clients, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
               "stream": "uniform random set per request", **results}  # fmt: skip
    print(f"wrote {write_json(args.out, payload)} (load average {' '.join(loadavg)})")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Serving benchmark: HTTP (Ray Serve, OpenAI API, streaming) vs the in-process engine on the same model.

    python benchmarks/bench_serve.py                    # tiny random Llama + random anchors (seconds)
    python benchmarks/bench_serve.py --model bundled    # SmolLM2-135M-Instruct + random rank-8 anchors (minutes)

At each concurrency (1, 8, 32) `c` closed-loop clients keep `c` requests in flight; every request has its own mix
(alpha per attribute drawn from a seeded RNG) and seed, so both sides generate the same tokens. Reported per side:
completion tokens/s, and p50/p99 of time to first token (first text) and of total request time. The engine side
drives the same step API the server's batcher drives, in this process; the HTTP side streams from a one-replica
Serve app on 127.0.0.1. Both sides use `--threads` torch threads (default 1: on a shared CPU, intra-op threads
spin against other processes and make timings erratic). Bounded: `--requests-per-client` requests (at least 8) per level, and no new request after
`--max-seconds`. The two sides alternate per level (`--rounds` times, the median-ratio round kept). Results merge into benchmarks/results/serve.json under the model's key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
ATTRIBUTES = ("sentiment", "formality")


def build_anchor_set(model: str, root: Path) -> str:
    from lerpray.testing import tiny_anchor_set

    if model == "tiny":
        return str(tiny_anchor_set(root))
    from lerpray.anchors import build_anchor_set as publish
    from lerpray.model.base import BUNDLED_MODEL, load_base_model, model_identity
    from lerpray.testing import TINY_ANCHORS, random_adapter

    base, _ = load_base_model(BUNDLED_MODEL)
    adapters = {n: random_adapter(base, root / n, r=8, lora_alpha=8, seed=i) for i, n in enumerate(TINY_ANCHORS)}
    publish(model_identity(base, BUNDLED_MODEL), adapters, root / "anchors", overwrite=True)
    return str(root / "anchors")


def workload(n: int, max_tokens: int, level: int) -> list[dict]:
    rng = random.Random(level)
    return [
        {
            "prompt": f"Request {i}: write a short note about the weather on day {rng.randint(1, 365)}.",
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": 1000 * level + i,
            "interpolation": {"alpha": {a: round(rng.random(), 4) for a in ATTRIBUTES}},
        }
        for i in range(n)
    ]


def summary(records: list[tuple[float, float, int]], wall_s: float) -> dict:
    """records: (ttft_s, total_s, completion_tokens) per request."""
    def pct(values: list[float], q: float) -> float:
        return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 4) if len(values) > 1 else \
            round(values[0], 4)

    ttft, total = [r[0] for r in records], [r[1] for r in records]
    tokens = sum(r[2] for r in records)
    return {
        "requests": len(records), "completion_tokens": tokens, "wall_s": round(wall_s, 3),
        "tokens_per_s": round(tokens / wall_s, 2),
        "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99), "total_p50_s": pct(total, 50),
        "total_p99_s": pct(total, 99),
    }


def run_engine(engine, bodies: list[dict], concurrency: int, max_seconds: float) -> dict:
    from lerpray.mixing import resolve_mix
    from lerpray.model import GenerationRequest, SamplingParams

    pending = list(reversed(bodies))
    active: dict[str, list] = {}  # request_id -> [start, first_text_at]
    records, start = [], time.perf_counter()
    while pending or active:
        while pending and len(active) < concurrency and time.perf_counter() - start < max_seconds:
            b = pending.pop()
            sampling = SamplingParams(temperature=b["temperature"], max_tokens=b["max_tokens"], seed=b["seed"])
            request = GenerationRequest(resolve_mix(b["interpolation"], engine.layout), b["prompt"], sampling=sampling)
            engine.add(request)
            active[request.request_id] = [time.perf_counter(), None]
        if not active:
            break
        for event in engine.step():
            now, rec = time.perf_counter(), active[event.request_id]
            if rec[1] is None and (event.text or event.finish_reason):
                rec[1] = now
            if event.finish_reason:
                records.append((rec[1] - rec[0], now - rec[0], event.completion_tokens))
                del active[event.request_id]
    return summary(records, time.perf_counter() - start)


async def http_request(client, body: dict) -> tuple[float, float, int]:
    start, first, tokens = time.perf_counter(), None, 0
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/completions", json=payload) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None:
                first = time.perf_counter()
    return first - start, time.perf_counter() - start, tokens


async def run_http(base_url: str, bodies: list[dict], concurrency: int, max_seconds: float) -> dict:
    import httpx

    queue = list(reversed(bodies))
    records: list[tuple[float, float, int]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        start = time.perf_counter()

        async def worker() -> None:
            while queue and time.perf_counter() - start < max_seconds:
                records.append(await http_request(client, queue.pop()))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(records, time.perf_counter() - start)


def start_server(anchors: str, max_tokens: int, threads: int) -> str:
    import ray
    from ray import serve

    from lerpray.serve import ServeArgs, make_app

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=max(2, threads), include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = ServeArgs(anchors=anchors, max_batch_size=32, max_queue=64, max_tokens_cap=max_tokens,
                     default_max_tokens=max_tokens, num_cpus=threads, torch_threads=threads)
    serve.run(make_app(args, max_ongoing_requests=64), name="bench", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def stop_server() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "bundled"), default="tiny")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per level and side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine and of the replica")
    parser.add_argument("--rounds", type=int, default=1, help="alternating engine/http runs per level (median kept)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    opts = parser.parse_args()

    import torch
    from _common import machine_description, result_meta  # benchmarks/_common.py (the script's folder is on sys.path)

    from lerpray.model.engine import Engine

    torch.set_num_threads(opts.threads)
    levels = {c: workload(max(8, opts.requests_per_client * c), opts.max_tokens, c) for c in opts.concurrency}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        anchors = build_anchor_set(opts.model, Path(tmp))
        base_url = start_server(anchors, opts.max_tokens, opts.threads)
        engine = Engine.from_uri(anchors, max_batch_size=32)
        run_engine(engine, workload(4, 4, 0), 4, 60)  # warm up both sides
        asyncio.run(run_http(base_url, workload(4, 4, 0), 4, 60))
        for c, bodies in levels.items():
            # Alternate the two sides so that both see the same background load on a shared machine.
            rounds = []
            for _ in range(opts.rounds):
                side_engine = run_engine(engine, bodies, c, opts.max_seconds)
                side_http = asyncio.run(run_http(base_url, bodies, c, opts.max_seconds))
                ratio = round(side_http["tokens_per_s"] / side_engine["tokens_per_s"], 3)
                rounds.append({"engine": side_engine, "http": side_http, "http_vs_engine_throughput": ratio})
            median = sorted(rounds, key=lambda r: r["http_vs_engine_throughput"])[len(rounds) // 2]
            rows.append({"concurrency": c, **median, "ratios_all_rounds": [r["http_vs_engine_throughput"]
                                                                           for r in rounds]})
        stop_server()
    machine = machine_description()
    result = {"meta": result_meta(machine), "machine": machine, "torch_threads": torch.get_num_threads(), "max_tokens": opts.max_tokens,
              "replica_num_cpus": opts.threads, "rounds": opts.rounds, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "levels": rows}
    existing = json.loads(opts.output.read_text()) if opts.output.is_file() else {}
    existing[opts.model] = result
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(existing, indent=2) + "\n")
    for row in rows:
        e, h = row["engine"], row["http"]
        print(f"{opts.model} c={row['concurrency']:>2}  engine {e['tokens_per_s']:8.1f} tok/s ttft p50 "
              f"{e['ttft_p50_s']:.3f}s | http {h['tokens_per_s']:8.1f} tok/s ttft p50 {h['ttft_p50_s']:.3f}s "
              f"p99 {h['ttft_p99_s']:.3f}s | ratio {row['http_vs_engine_throughput']}")


if __name__ == "__main__":
    main()

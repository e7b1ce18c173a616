"""The multiplexed Serve app (multiplex.max_sets_per_replica) on a local Ray: what a set's first request costs, where
its next requests go, and what serving more sets than the replicas hold costs.

    python benchmarks/bench_multiplex.py      # bundled SmolLM2-135M fp32, 6 sets of 4 rank-8 anchors, 2 LerpSets
                                              # replicas holding 2 sets each -> results/multiplex.json

Each set is a published anchor set of the quickstart's shape (two attributes x two poles, rank 8 on q,k,v,o, random
factors) on the bundled base; a LerpSets replica loads the base once and adds each set it serves to that engine.
Two phases over HTTP, one request at a time (max_tokens 16):
  fits:  the first 4 sets (what the 2 replicas hold together): each set's first request (the load, then the
         answer), a pause for Serve to learn where the set is, then `--repeats` more; the replica of each answer.
  over:  round-robin over all 6 sets for `--rounds` rounds: 6 sets on 4 places, so requests load and unload sets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANCHORS = ("sentiment.positive", "sentiment.negative", "formality.formal", "formality.informal")
REPLICA = "x-lerpray-replica"


def build_sets(n: int, folder: Path) -> list[str]:
    import torch
    from bench_active import random_adapters
    from core_workload import make_model

    from lerpray.anchors import build_anchor_set
    from lerpray.model.base import BUNDLED_MODEL, model_identity

    base, _, _ = make_model("bundled", "cpu", torch.float32)
    names = [f"s{i}.{a}" for i in range(n) for a in ANCHORS]
    dirs = random_adapters(base, names, 8, folder / "adapters")
    identity = model_identity(base, BUNDLED_MODEL)
    for i in range(n):
        build_anchor_set(identity, {a: dirs[f"s{i}.{a}"] for a in ANCHORS}, folder / f"set{i}", overwrite=True)
    return [str(folder / f"set{i}") for i in range(n)]


def request(client, model: str) -> dict:
    body = {"model": model, "prompt": "The weather today", "max_tokens": 16, "seed": 1,
            "interpolation": {"alpha": {"sentiment": 0.7, "formality": 0.4}}}  # fmt: skip
    started = time.perf_counter()
    response = client.post("/v1/completions", json=body)
    return {"set": model, "status": response.status_code, "s": time.perf_counter() - started,
            "replica": response.headers.get(REPLICA)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", type=int, default=6)
    p.add_argument("--per-replica", type=int, default=2)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results" / "multiplex.json"))
    args = p.parse_args()
    import httpx
    import ray
    from _common import machine_description, write_json
    from ray import serve

    from lerpray.serve import ServeArgs, make_app

    folder = Path(tempfile.mkdtemp(prefix="lerpray-multiplex-"))
    uris = build_sets(args.sets, folder)
    ids = [f"set{i}" for i in range(args.sets)]
    config = ServeArgs(anchors=uris[0], model_name=ids[0], sets=dict(zip(ids[1:], uris[1:], strict=True)),
                       multiplex={"max_sets_per_replica": args.per_replica}, num_cpus=0.5, torch_threads=1,
                       max_batch_size=4, kv_cache_bytes=64 * 2**20, max_tokens_cap=64, default_max_tokens=16)  # fmt: skip
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8123})
        serve.run(make_app(config, num_replicas=args.replicas), name="lerpray", route_prefix="/")
        with httpx.Client(base_url="http://127.0.0.1:8123", timeout=600) as client:
            fits = []
            for name in ids[: args.replicas * args.per_replica]:
                first = request(client, name)
                time.sleep(1.0)  # replicas push the sets they hold every 0.1 s; Serve's handles learn it after
                later = [request(client, name) for _ in range(args.repeats)]
                on_holder = sum(r["replica"] == first["replica"] for r in later)
                fits.append({"set": name, "first_s": first["s"], "later_median_s": statistics.median(r["s"] for r in later),
                             "later_on_first_replica": on_holder, "later": len(later), "replica": first["replica"],
                             "statuses": sorted({first["status"], *(r["status"] for r in later)})})  # fmt: skip
                print(fits[-1], flush=True)
            over = [request(client, name) for _ in range(args.rounds) for name in ids]
            print(over, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)
    over_s = [r["s"] for r in over]
    payload = {
        "machine": machine_description("cpu"), "benchmark": "multiplex", "model": "bundled",
        "anchors_per_set": len(ANCHORS), "rank": 8, "sets": args.sets, "replicas": args.replicas,
        "max_sets_per_replica": args.per_replica, "max_tokens": 16,
        "fits": {
            "sets": fits,
            "first_median_s": statistics.median(f["first_s"] for f in fits),
            "later_median_s": statistics.median(f["later_median_s"] for f in fits),
            "later_on_first_replica": sum(f["later_on_first_replica"] for f in fits),
            "later": sum(f["later"] for f in fits),
            "replicas_used": len({f["replica"] for f in fits}),
            "sets_per_replica": sorted(Counter(f["replica"] for f in fits).values()),
        },
        "over": {"requests": len(over), "failures": sum(r["status"] != 200 for r in over),
                 "median_s": statistics.median(over_s), "max_s": max(over_s), "requests_log": over},  # fmt: skip
    }
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()

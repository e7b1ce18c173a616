"""Resident memory of a Serve replica serving 1 or more anchor sets on one base model (no Ray: the replica's own
constructor, `LerpServer.__init__`, in a fresh process per run).

    python benchmarks/bench_replica_sets_memory.py            # bundled SmolLM2-135M fp32, 1 and 4 sets of 4
                                                               # rank-8 anchors, shared engine vs an engine per set
                                                               # -> results/replica_sets_memory.json
    python benchmarks/bench_replica_sets_memory.py --modes multiplexed own \
        --out benchmarks/results/multiplex_replica_memory.json   # a multiplexed set replica holding 1 and 4 sets

Each set is a published anchor set of the quickstart's shape (4 anchors: two attributes x two poles, rank 8 on
q,k,v,o, random factors). "shared" is how a replica serves them (lerpray.serve.shared_sets: one engine over one base
copy); "own" gives each set its own engine (what a replica did before, and still does for a set on another base).
"multiplexed" is a multiplexed set replica (lerpray.serve.replica_bases, max_sets_per_replica = the sets) that Serve
asked for each set in turn: one paged engine over one base copy, each set registered with its anchor pool.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANCHORS = ("sentiment.positive", "sentiment.negative", "formality.formal", "formality.informal")


def child(sets: int, mode: str, folder: Path) -> dict:
    import torch
    from _common import rss_bytes

    from lerpray.serve import deployment
    from lerpray.serve.live import serve_engine

    torch.set_num_threads(1)
    uris = [str(folder / f"set{i}") for i in range(sets)]
    args = {"anchors": uris[0], "sets": {f"set{i}": u for i, u in enumerate(uris[1:], 1)}, "max_batch_size": 8,
            "kv_cache_bytes": 64 * 2**20, "torch_threads": 1}  # fmt: skip
    if mode == "multiplexed":
        return _multiplexed(args, sets)
    user_class = deployment.LerpServer.func_or_class.__mro__[1]  # the class under Serve's ingress wrapper
    server = user_class.__new__(user_class)
    user_class.__init__(server, args, engine_factory=serve_engine if mode == "own" else None)
    engines = len({id(s.engine) for s in server.sets.values()})
    rss = rss_bytes()
    for served in server.sets.values():
        served.batcher.close()
    return {"sets": sets, "mode": mode, "engines": engines, "rss_mb": rss / 2**20}


def _multiplexed(args: dict, sets: int) -> dict:
    from _common import rss_bytes

    from lerpray.serve.config import ServeArgs
    from lerpray.serve.live import set_args
    from lerpray.serve.replica_bases import ReplicaBases

    wanted = set_args(ServeArgs(**args, multiplex={"max_sets_per_replica": sets}))
    bases = ReplicaBases(wanted, sets, None)
    held = [bases.load(name) for name in wanted]  # what the replica's serve.multiplexed loader does per set
    engines, slots = len(bases.engines), bases.engines[0].pool.capacity
    rss = rss_bytes()
    for served in held:
        served.batcher.close()
    return {"sets": sets, "mode": "multiplexed", "engines": engines, "anchor_slots": slots, "rss_mb": rss / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", type=int, nargs="+", default=[1, 4])
    p.add_argument("--modes", nargs="+", default=["shared", "own"], choices=["shared", "own", "multiplexed"])
    p.add_argument("--out", default=str(HERE / "results" / "replica_sets_memory.json"))
    p.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)  # sets, mode, folder
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(int(args.child[0]), args.child[1], Path(args.child[2]))), flush=True)
        os._exit(0)  # the batchers' threads may still be winding down: no interpreter teardown under them
    import torch
    from _common import machine_description, write_json
    from bench_active import random_adapters
    from core_workload import make_model

    from lerpray.anchors import build_anchor_set
    from lerpray.model.base import BUNDLED_MODEL, model_identity

    base, _, _ = make_model("bundled", "cpu", torch.float32)
    folder = Path(tempfile.mkdtemp(prefix="lerpray-replica-sets-"))
    names = [f"s{i}.{a}" for i in range(max(args.sets)) for a in ANCHORS]
    dirs = random_adapters(base, names, 8, folder / "adapters")
    identity = model_identity(base, BUNDLED_MODEL)
    for i in range(max(args.sets)):
        build_anchor_set(identity, {a: dirs[f"s{i}.{a}"] for a in ANCHORS}, folder / f"set{i}", overwrite=True)
    del base
    rows = []
    for mode in args.modes:
        for sets in args.sets:
            out = subprocess.run([sys.executable, __file__, "--child", str(sets), mode, str(folder)],
                                 capture_output=True, text=True, check=True, cwd=HERE)  # fmt: skip
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    payload = {"machine": machine_description("cpu"), "benchmark": "replica_sets_memory", "model": "bundled",
               "anchors_per_set": len(ANCHORS), "rank": 8, "results": rows}  # fmt: skip
    print(f"wrote {write_json(args.out, payload)}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

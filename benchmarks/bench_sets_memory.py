"""Memory of many anchor sets over one base model in one InterpolatedModel (lerpray.model.multi_set).

    python benchmarks/bench_sets_memory.py                 # SmolLM2-135M fp32: 1 and 16 sets of 2 anchors
                                                            # -> results/sets_memory.json

Each count runs in a fresh subprocess: load the base model, write 2 x sets random rank-8 adapters (q,k,v,o), read
them as anchor sets, `interpolate_sets` them into one model, run one forward with a row of every set, and report the
resident set size (RSS) after loading the base and at the end. The growth per set is its anchors' factors; the base
weights are held once whatever the number of sets.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(sets: int, folder: Path) -> dict:
    import torch
    from _common import rss_bytes
    from core_workload import make_model

    from lerpray.model.multi_set import interpolate_sets, set_row
    from lerpray.testing import anchor_set_from_adapters

    torch.set_num_threads(1)
    base, tokenizer, _ = make_model("bundled", "cpu", torch.float32)
    after_base = rss_bytes()
    anchor_sets = {f"set{i}": anchor_set_from_adapters(base, {f"tone.{pole}": folder / f"s{i}.{pole}"
                                                               for pole in ("high", "low")}) for i in range(sets)}
    imodel = interpolate_sets(base, anchor_sets)
    del anchor_sets
    imodel.set_coeffs([set_row(imodel, name, [0.6, 0.4]) for name in imodel.blocks])
    with torch.no_grad():
        imodel(torch.ones(len(imodel.blocks), 8, dtype=torch.long))
    params = sum(p.numel() for p in base.parameters())
    return {"sets": sets, "anchors": 2 * sets, "rss_after_base_mb": after_base / 2**20,
            "rss_end_mb": rss_bytes() / 2**20, "base_parameters": params}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", type=int, nargs="+", default=[1, 16])
    p.add_argument("--out", default=str(HERE / "results" / "sets_memory.json"))
    p.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)  # sets, adapter folder
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(int(args.child[0]), Path(args.child[1]))))
        return
    import torch
    from _common import machine_description, write_json
    from bench_active import random_adapters
    from core_workload import make_model

    # The adapters are written here, so the children hold no transient model copy (PEFT wraps a deep copy).
    base, _, _ = make_model("bundled", "cpu", torch.float32)
    folder = Path(tempfile.mkdtemp(prefix="lerpray-sets-"))
    dirs = random_adapters(base, [f"s{i}.{pole}" for i in range(max(args.sets)) for pole in ("high", "low")], 8,
                           folder / "tmp")
    for name, path in dirs.items():
        shutil.copytree(path, folder / name)
    del base
    rows = []
    for sets in args.sets:
        out = subprocess.run([sys.executable, __file__, "--child", str(sets), str(folder)], capture_output=True,
                             text=True, check=True, cwd=HERE)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    growth = rows[-1]["rss_end_mb"] - rows[0]["rss_end_mb"]
    payload = {"machine": machine_description("cpu"), "benchmark": "sets_memory", "model": "bundled", "results": rows,
               "growth_mb_first_to_last": growth, "per_added_set_mb": growth / max(1, rows[-1]["sets"] - rows[0]["sets"])}
    print(f"wrote {write_json(args.out, payload)}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

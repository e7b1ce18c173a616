"""Anchor training on Ray Train: K anchors concurrently vs one after another, and Ray Train's overhead.

    python benchmarks/bench_train.py                          # tiny Llama, K=2, 30 steps -> results/train.json
    python benchmarks/bench_train.py --model bundled --steps 8 --batch-size 2   # SmolLM2-135M-Instruct (slow)

Workload: K anchors (K/2 attributes x 2 poles), each one Ray Train run of one worker with 1 CPU (torch then uses
one thread: Ray sets OMP_NUM_THREADS from the worker's CPUs), LoRA r=8 on q/k/v/o, `--steps` optimizer steps of
`--batch-size` blocks of `--block-size` tokens, DDP path, checkpoints every 10 steps to local storage, published to
a local folder. A local Ray cluster of `--cpus` CPUs (default: K) runs everything.

1. Parallel efficiency: the same job with max_concurrent_anchors = K, then = 1 (same resources, same per-anchor
   work). speed-up = T_sequential / T_concurrent (end-to-end wall of train_anchors: start-up, training, publish),
   efficiency = speed-up / K. Also from the training loops alone: aggregate tokens/s concurrent vs sequential.
2. Ray Train overhead for one anchor: the sequential run's per-anchor trainer.fit() wall vs a plain in-process loop
   (same model, data, LoRA, optimizer and steps; load + pack + train + save adapter) in a fresh Python process with
   OMP_NUM_THREADS=1, as Ray gives a 1-CPU worker (switching an already-started torch from 2 threads to 1 was
   several times slower than starting at 1 on this machine, so the plain loop gets the same clean start).

On a shared machine the load average moves these numbers by several times; it is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine_description, median, write_json

HERE = Path(__file__).resolve().parent
ATTRIBUTES = [("sentiment", "positive", "negative"), ("formality", "formal", "informal"),
              ("humor", "funny", "serious"), ("simplicity", "simple", "complex")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "bundled"], default="tiny",
                   help="tiny: random Llama hidden 256, 4 layers (built here); bundled: SmolLM2-135M-Instruct")
    p.add_argument("--anchors", type=int, default=2, choices=[2, 4, 6, 8], help="K")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray cluster (default K)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2, help="rounds of (concurrent, sequential, in-process)")
    p.add_argument("--out", default=str(HERE / "results" / "train.json"))
    p.add_argument("--in-process", nargs=2, metavar=("BASE", "DATA"), help=argparse.SUPPRESS)  # the subprocess
    return p.parse_args(argv)


def job(base: str, data: Path, out: Path, args: argparse.Namespace, concurrent: int, run_id: str) -> dict:
    anchors = [{"attribute": attr, "pole": pole, "data": {"paths": [str(data / f"{attr}.{pole}.txt")]}}
               for attr, *poles in ATTRIBUTES[: args.anchors // 2] for pole in poles]
    return {
        "run_id": run_id, "base_model": base,
        "attributes": {attr: {"high": hi, "low": lo} for attr, hi, lo in ATTRIBUTES[: args.anchors // 2]},
        "lora": {"r": 8, "lora_alpha": 16},
        "training": {"block_size": args.block_size, "batch_size": args.batch_size, "max_steps": args.steps},
        "anchors": anchors,
        "resources": {"workers_per_anchor": 1, "cpus_per_worker": 1, "max_concurrent_anchors": concurrent},
        "checkpoint_every": 10, "max_failures": 0,
        "output": str(out / f"set-{run_id}"), "storage_path": str(out / "ray"),
    }


def write_data(folder: Path, blocks_needed: int, block_size: int) -> None:
    """Plain-text poles long enough that no block repeats within the run (~1 token per byte for the tiny model)."""
    for attr, *poles in ATTRIBUTES:
        for pole in poles:
            lines = [f"This {attr} text is {pole}: example {i} of many, with some more words after it."
                     for i in range(blocks_needed * block_size // 60 + 10)]
            (folder / f"{attr}.{pole}.txt").write_text("\n".join(lines))


def in_process_subprocess(base: str, data_file: Path, args: argparse.Namespace) -> dict:
    """Run `in_process` in a fresh interpreter with one OpenMP thread; its last stdout line is the JSON result."""
    argv = [sys.executable, __file__, "--in-process", base, str(data_file), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--block-size", str(args.block_size)]
    done = subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_process(base: str, data_file: Path, args: argparse.Namespace, out: Path) -> dict:
    """The same anchor's training without Ray: one process, one thread, same loop body as lerpray.train.worker."""
    from peft import LoraConfig, get_peft_model

    from lerpray.data.text_io import read_texts
    from lerpray.model.base import load_base_model
    from lerpray.train.packing import BlockSchedule, pack_blocks

    start = time.perf_counter()
    model, tokenizer = load_base_model(base)
    blocks = pack_blocks(read_texts([str(data_file)]), tokenizer, args.block_size, seed=0)  # [N, T]
    schedule = BlockSchedule(len(blocks), batch_size=args.batch_size, grad_accum=1, rank=0, world_size=1, seed=0)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-4)
    loop_start = time.perf_counter()
    for step in range(args.steps):
        batch = schedule.batch(blocks, step, 0)  # [B, T]
        peft_model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    loop_s = time.perf_counter() - loop_start
    peft_model.save_pretrained(str(out / "in-process-adapter"))
    tokens = args.steps * args.batch_size * args.block_size
    return {"wall_s": time.perf_counter() - start, "loop_s": loop_s, "tokens_per_s": tokens / loop_s}


def ray_run(config_dict: dict) -> dict:
    from lerpray.train import parse_train_config, train_anchors

    start = time.perf_counter()
    outcome = train_anchors(parse_train_config(config_dict), show_progress=False)
    wall = time.perf_counter() - start
    per_anchor = {name: {"fit_wall_s": end - begin, "loop_s": outcome.metrics[name]["train_seconds"],
                         "tokens_per_s": outcome.metrics[name]["tokens_per_s"]}
                  for name, (begin, end) in outcome.spans.items()}
    first_start = min(b for b, _ in outcome.spans.values())
    last_end = max(e for _, e in outcome.spans.values())
    loop_tokens = sum(outcome.metrics[n]["tokens"] for n in per_anchor)
    return {"wall_s": wall, "fits_wall_s": last_end - first_start, "per_anchor": per_anchor,
            "loop_tokens": loop_tokens}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.in_process:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(in_process(args.in_process[0], Path(args.in_process[1]), args, Path(tmp))))
        return 0
    from lerpray.model.base import bundled_model_dir
    from lerpray.ray_cluster import local_ray
    from lerpray.testing import save_tiny_base_model

    machine_before = machine_description()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="lerpray-bench-train-") as tmp:
        root = Path(tmp)
        base = (str(save_tiny_base_model(root / "base", hidden_size=256, num_layers=4)) if args.model == "tiny"
                else str(bundled_model_dir()))
        write_data(root, blocks_needed=args.steps * args.batch_size, block_size=args.block_size)
        cpus = args.cpus or args.anchors
        with local_ray(num_cpus=cpus, log_to_driver=False):
            for r in range(args.repeats):  # alternate the order so that load drift hits both modes alike
                runs = {}
                for mode in ("concurrent", "sequential") if r % 2 == 0 else ("sequential", "concurrent"):
                    width = args.anchors if mode == "concurrent" else 1
                    runs[mode] = {"loadavg_1m": os.getloadavg()[0],
                                  **ray_run(job(base, root, root, args, concurrent=width, run_id=f"{mode}-{r}"))}
                runs["in_process"] = in_process_subprocess(base, root / "sentiment.positive.txt", args)
                rounds.append(runs)
    result = report(args, rounds, cpus, machine_before)
    write_json(args.out, result)
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.out}")
    return 0


def round_summary(k: int, cpus: int, runs: dict) -> dict:
    concurrent, sequential, plain = runs["concurrent"], runs["sequential"], runs["in_process"]
    speedup = sequential["wall_s"] / concurrent["wall_s"]
    single = sum(a["tokens_per_s"] for a in sequential["per_anchor"].values()) / k
    together = sum(a["tokens_per_s"] for a in concurrent["per_anchor"].values())
    first = next(iter(sequential["per_anchor"].values()))
    return {
        "concurrent_s": concurrent["wall_s"], "sequential_s": sequential["wall_s"],
        "speedup": speedup, "parallel_efficiency": speedup / min(k, cpus),
        "loop_tokens_per_s_one_alone": single, "loop_tokens_per_s_k_together": together,
        "loop_efficiency": together / (min(k, cpus) * single),
        "ray_fit_wall_s": first["fit_wall_s"], "in_process_wall_s": plain["wall_s"],
        "ray_overhead_s": first["fit_wall_s"] - plain["wall_s"],
        "ray_loop_tokens_per_s": first["tokens_per_s"], "in_process_tokens_per_s": plain["tokens_per_s"],
        "ray_loop_vs_in_process": first["tokens_per_s"] / plain["tokens_per_s"],
    }


def report(args, rounds: list[dict], cpus: int, machine_before: dict) -> dict:
    per_round = [round_summary(args.anchors, cpus, runs) for runs in rounds]
    summary = {"anchors": args.anchors, "ray_cpus": cpus, "ideal_speedup": min(args.anchors, cpus),
               "model": args.model, "steps": args.steps, "tokens_per_step": args.batch_size * args.block_size,
               "repeats": len(rounds),
               **{f"median_{key}": median([r[key] for r in per_round]) for key in per_round[0]}}
    return {"benchmark": "train", "argv": sys.argv[1:], "summary": summary, "per_round": per_round,
            "runs": rounds, "machine_before": machine_before, "loadavg_after": list(os.getloadavg())}


if __name__ == "__main__":
    sys.exit(main())

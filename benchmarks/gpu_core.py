"""Core interpolation benchmark on a GPU: a ~1B randomly initialised Llama in bf16, batches 16/32/64.

    PYTHONPATH=. python3 benchmarks/gpu_core.py                  # on the GPU machine: writes $OUT/core_gpu.json
    PYTHONPATH=. python3 benchmarks/gpu_core.py --tiny           # CPU rehearsal: tiny Llama in bf16 (to $TMPDIR)

Same methods, workload shape and decode loop as bench_core.py (K=10 anchors, r=32, lora_alpha=16 on q,k,v,o;
32 prompt + 32 new tokens, greedy), on LlamaConfig(hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate
5632, vocab 32000) with random weights: throughput does not depend on the weights' values. Needs torch (CUDA),
transformers, peft, safetensors, pydantic, tokenizers; imports no Ray, boto3 or gguf. Memory over 1,000 distinct
mixes is measured in this process (host RSS and CUDA allocated). Built to finish in about 3 minutes on an H100:
`--budget-s 100` stops further repeats once the timed runs have taken that long (every method keeps at least one
run); one round (all methods, after a full-length warm-up) took ~60 s on an H100.
Any bench_core.py flag can be added to override these defaults.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import bench_core

GPU_DEFAULTS = [
    "--model", "llama1b", "--device", "cuda", "--dtype", "bf16",
    "--batches", "16", "32", "64", "--per-mix-batches", "16",
    "--repeats", "3", "--per-mix-repeats", "2", "--budget-s", "100",
    "--ttft-trials", "10", "--rss-mixes", "1000", "--rss-batch", "64", "--rss-in-process", "--profile",
]
TINY_DEFAULTS = [
    "--model", "tiny", "--device", "cpu", "--dtype", "bf16",
    "--batches", "4", "8", "--per-mix-batches", "4", "--prompt-tokens", "8", "--new-tokens", "4",
    "--repeats", "1", "--ttft-trials", "3", "--rss-mixes", "32", "--rss-batch", "8", "--rss-in-process",
    "--profile",
]


def main(argv: list[str]) -> int:
    tiny = "--tiny" in argv
    argv = [a for a in argv if a != "--tiny"]
    default = Path(tempfile.gettempdir()) / "lerpray-bench" if tiny else Path(bench_core.HERE) / "results"
    out_dir = Path(os.environ.get("OUT") or default)
    name = "core_gpu_tiny_cpu" if tiny else "core_gpu"
    outputs = ["--out", str(out_dir / f"{name}.json"), "--plot", str(out_dir / f"{name}_throughput.png")]
    if not tiny:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: run with --tiny for the CPU rehearsal", file=sys.stderr)
            return 2
    # Later flags win in argparse, so the caller's own flags override these defaults.
    return bench_core.main([*(TINY_DEFAULTS if tiny else GPU_DEFAULTS), *outputs, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

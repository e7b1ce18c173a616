"""GPU benchmarks in one command: the engine targets (bench_engine.py --gpu), then the per-mix methods (bench_core).

    PYTHONPATH=. python3 benchmarks/gpu_core.py                  # on a GPU: results/gpu/engine_gpu.json (~6 min
                                                                 # on an H100: ~1B and 8B Llama shapes, bf16)
    PYTHONPATH=. python3 benchmarks/gpu_core.py --methods        # also bench_core's methods: results/gpu/core_gpu.json
    ... --out-dir DIR                                            # write there instead
    PYTHONPATH=. python3 benchmarks/gpu_core.py --cpu-rehearsal  # the same phases on the CPU, tiny Llama in bf16
                                                                 # (engine; --methods also bench_core), < 2 min

Then bench_active.py --gpu (results/gpu/active_gpu.json): the ~1B shape with 32 rank-16 anchors loaded and 2 used per
row against the engine holding only those 2 (rehearsal: --quick).

Engine targets (random weights: throughput does not depend on their values): the ladder base / anchors loaded
but unused / one anchor / a mix per row at batch 16/64/128 (128 prompt + 128 new tokens, 10 anchors r=32 on
q,k,v,o), HF `generate` at batch 128, the decode step at batch 64 against one read of the weights at the measured
copy bandwidth, and CUDA-graph captures (all at start-up) before/after never-seen mixes. Needs torch (CUDA),
transformers, peft, safetensors, pydantic, tokenizers (the GPU image lacks pydantic: benchmarks/gpu_setup.sh installs
it from gpu-wheels/, `make gpu-wheels`); no Ray, boto3, gguf, network or git.

bench_core's methods (per-mix merging, the paper's method, PEFT cat) on LlamaConfig(hidden 2048, 16 layers, 32
heads, 8 KV heads, intermediate 5632, vocab 32000), 32 prompt + 32 new tokens; `--budget-s 100` stops further
repeats once the timed runs have taken that long. Any bench_core.py flag can be added to override its defaults.
"""

from __future__ import annotations

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
    tiny = "--tiny" in argv or "--cpu-rehearsal" in argv
    methods = "--methods" in argv or "--tiny" in argv  # --tiny: bench_core's rehearsal, as before
    argv = [a for a in argv if a not in ("--tiny", "--cpu-rehearsal", "--methods")]
    out_dir = Path(tempfile.gettempdir()) / "lerpray-bench" if tiny else Path(bench_core.HERE) / "results" / "gpu"
    if "--out-dir" in argv:
        i = argv.index("--out-dir")
        out_dir, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2:]
    name = "core_gpu_tiny_cpu" if tiny else "core_gpu"
    outputs = ["--out", str(out_dir / f"{name}.json"), "--plot", str(out_dir / f"{name}_throughput.png")]
    if not tiny:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: run with --cpu-rehearsal for the same phases on the CPU", file=sys.stderr)
            return 2
    import bench_engine

    engine_run = ["--cpu-rehearsal", "--out", str(out_dir / "engine_cpu_rehearsal.json")] if tiny else [
        "--gpu", "--out", str(out_dir / "engine_gpu.json")]
    code = bench_engine.main(engine_run)
    if code:
        return code
    import bench_active  # cost by active anchors under CUDA graphs: 32 anchors loaded, 2 used per row

    bench_active.main(["--quick"] if tiny else ["--gpu"])
    if not methods:
        return 0
    # Later flags win in argparse, so the caller's own flags override these defaults.
    return bench_core.main([*(TINY_DEFAULTS if tiny else GPU_DEFAULTS), *outputs, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

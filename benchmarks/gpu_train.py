"""One anchor's LoRA training step on a GPU: tokens/s and model FLOPs utilisation (MFU), with the card named.

    PYTHONPATH=. python3 benchmarks/gpu_train.py           # on a GPU: benchmarks/results/gpu/train_gpu.json (~2 min)
    PYTHONPATH=. python3 benchmarks/gpu_train.py --cpu-rehearsal   # the same step on a tiny Llama, CPU (to $TMPDIR)

The step is lerpray's worker step without Ray around it (what lerpray.train.strategies.TorchStrategy does on one
GPU): PEFT LoRA r=32, lora_alpha=16, dropout 0.1 on q/k/v/o (the paper's settings), bf16 autocast over fp32 weights,
AdamW on the LoRA factors, grad-norm clipping at 1.0, labels = inputs (causal LM loss). Models, random weights
(throughput does not depend on the values; the GPU image has no gguf to read the bundled SmolLM2 file):
  smollm2-135m  SmolLM2-135M's config: hidden 576, 30 layers, 9 heads / 3 KV, intermediate 1536, vocab 49152
  smollm2-1.7b  SmolLM2-1.7B's config: hidden 2048, 24 layers, 32 heads / 32 KV, intermediate 8192, vocab 49152
Shapes: block 128 (the paper's) and 512 tokens, batches chosen to fill the GPU. Each point: 3 warm-up steps, then
timed steps (CUDA-synchronised) for about `--seconds` seconds.

MFU counts the matmul FLOPs a LoRA step really needs: forward 2*N + attention 4*L*T*d per token (N = parameters of
every matmul incl. the LM head, LoRA factors included); backward ~ the forward again (gradients w.r.t. activations
through the frozen weights; the frozen weights get no weight gradients), i.e. 2x forward in total, against the
card's dense bf16 peak (H100/H200 SXM 989 TFLOP/s). `mfu_6n` also gives the full-fine-tuning convention (6N).
Needs torch (CUDA), transformers and peft; imports no Ray, pydantic, DeepSpeed or lerpray.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import write_json  # benchmarks/_common.py (the script's folder is on sys.path)

RESULTS_GPU = Path(__file__).resolve().parent / "results" / "gpu"
CONFIGS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512),
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
    "smollm2-1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                         intermediate_size=8192, vocab_size=49152, tie_word_embeddings=True),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
GPU_POINTS = [("smollm2-135m", 128, 64), ("smollm2-135m", 128, 256), ("smollm2-135m", 512, 64),
              ("smollm2-1.7b", 128, 64), ("smollm2-1.7b", 512, 16)]  # (model, block, batch)
TINY_POINTS = [("tiny", 32, 4)]


def build(name: str, device: str):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=2048, **CONFIGS[name])
    with torch.device(device):  # initialise on the GPU: a 1.7B model's CPU init alone takes tens of seconds
        model = LlamaForCausalLM(config)
    lora = LoraConfig(r=32, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    return peft_model, config


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: all but the input embedding (the LM head counts, tied)."""
    embed = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters() if p is not embed)
    return total + embed.numel()  # the tied LM head multiplies by the embedding matrix once per token


def step_flops_per_token(model, config, block: int) -> tuple[float, float]:
    n = matmul_params(model)
    attention = 4 * config.num_hidden_layers * block * config.hidden_size
    forward = 2 * n + attention
    return 2 * forward, 6 * n + 3 * attention  # (LoRA step, full fine-tuning convention)


def measure(name: str, block: int, batch: int, device: str, seconds: float) -> dict:
    model, config = build(name, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    autocast = torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16)
    data = torch.randint(2, config.vocab_size, (batch, block), device=device)  # [B, T]

    def step() -> float:
        with autocast:
            loss = model(input_ids=data, labels=data).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())  # one host sync per step, as in the worker loop (loss reporting)

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 3:
        step()
        steps += 1
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tokens_per_s = steps * batch * block / elapsed
    lora_flops, full_flops = step_flops_per_token(model, config, block)
    peak = peak_flops(device)
    result = {"model": name, "block": block, "batch": batch, "steps": steps, "seconds": elapsed,
              "tokens_per_s": tokens_per_s, "step_ms": 1000 * elapsed / steps,
              "matmul_params": matmul_params(model), "trainable_params": sum(p.numel() for p in params),
              "achieved_tflops": tokens_per_s * lora_flops / 1e12}
    if peak:
        result.update(mfu=tokens_per_s * lora_flops / peak, mfu_6n=tokens_per_s * full_flops / peak)
    if device == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def peak_flops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", "--cpu-rehearsal", dest="tiny", action="store_true",
                   help="CPU rehearsal: the same step and phases on a tiny Llama")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per point")
    p.add_argument("--budget-s", type=float, default=150.0, help="start no further point after this many seconds")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="default: benchmarks/results/gpu (GPU), the temp folder's lerpray-bench (--tiny)")
    args = p.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-rehearsal for the same step on the CPU", file=sys.stderr)
        return 2
    out_dir = args.out_dir or (Path(tempfile.gettempdir()) / "lerpray-bench" if args.tiny else RESULTS_GPU)
    started, points = time.perf_counter(), []
    for name, block, batch in TINY_POINTS if args.tiny else GPU_POINTS:
        if time.perf_counter() - started > args.budget_s:
            break
        try:
            points.append(measure(name, block, batch, device, 1.0 if args.tiny else args.seconds))
        except torch.OutOfMemoryError as err:
            points.append({"model": name, "block": block, "batch": batch, "error": f"out of memory: {err}"[:200]})
        if device == "cuda":
            torch.cuda.empty_cache()  # the point's model is gone with measure()'s frame
        print(json.dumps(points[-1]), flush=True)
    result = {"benchmark": "train_gpu", "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "points": points}
    out = write_json(out_dir / ("train_gpu_tiny_cpu.json" if args.tiny else "train_gpu.json"), result, device)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

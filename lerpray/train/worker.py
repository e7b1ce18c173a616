"""The per-worker training loop of one anchor: PEFT LoRA on the base model, DDP or DeepSpeed ZeRO, checkpoints.

Ray Train runs `train_loop_per_worker` on every worker of one anchor's TorchTrainer. The loop reads top to bottom:
load model + data -> wrap (DDP via ray.train.torch.prepare_model, or deepspeed.initialize) -> resume from
ray.train.get_checkpoint() -> step -> every `checkpoint_every` steps ray.train.report(checkpoint=...) -> the final
checkpoint also holds the PEFT adapter folder (`adapter/`) and the base model identity (`base_model.json`).

Resumption is exact: batches are a pure function of the step (packing.BlockSchedule) and dropout is reseeded per step,
so only the weights, the optimizer and the step count live in a checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

from lerpray.data.text_io import read_texts
from lerpray.train.packing import BlockSchedule, pack_blocks, steps_for_epochs
from lerpray.train.strategies import TorchStrategy, build_strategy
from lerpray.train.worker_args import WorkerArgs

ADAPTER_DIR = "adapter"  # PEFT folder inside the final checkpoint
IDENTITY_FILE = "base_model.json"
STATE_FILE = "state.json"


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; `config` is TorchTrainer's train_loop_config: {"args": WorkerArgs}."""
    run_worker(config["args"])


def run_worker(args: WorkerArgs) -> None:
    import ray.train
    from peft import LoraConfig, get_peft_model

    from lerpray.model.base import BUNDLED_MODEL, load_base_model, model_identity

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model, tokenizer = load_base_model(args.base_model)
    identity = model_identity(model, args.base_model or BUNDLED_MODEL)  # before PEFT renames the parameters
    texts = read_texts(args.data_paths, args.text_field, args.data_format, args.s3_options)
    blocks = pack_blocks(texts, tokenizer, args.block_size, args.seed)  # [N, T]
    schedule = BlockSchedule(len(blocks), batch_size=args.batch_size, grad_accum=args.grad_accum, rank=rank,
                             world_size=world, seed=args.seed)
    total_steps = args.max_steps or steps_for_epochs(len(blocks), args.epochs, schedule.blocks_per_step)

    torch.manual_seed(args.seed)  # identical LoRA init on every rank
    lora = LoraConfig(r=args.r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=list(args.target_modules), use_rslora=args.use_rslora, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    strategy = build_strategy(peft_model, args, total_steps=total_steps)

    start_step = _resume(strategy)
    tokens_per_step = schedule.blocks_per_step * args.block_size
    started, losses = time.perf_counter(), []
    for step in range(start_step, total_steps):
        torch.manual_seed(_step_seed(args.seed, step, rank))  # dropout masks independent of restarts
        step_loss = 0.0
        for micro in range(args.grad_accum):
            batch = schedule.batch(blocks, step, micro).to(strategy.device)  # [B, T]
            step_loss += strategy.micro_step(batch, last=micro == args.grad_accum - 1) / args.grad_accum
        strategy.optimizer_step()
        losses.append(_mean_across_ranks(step_loss, world))
        done = step + 1
        rate = tokens_per_step * (done - start_step) / (time.perf_counter() - started)
        metrics = {"step": done, "total_steps": total_steps, "loss": losses[-1], "tokens_per_s": rate,
                   "tokens": done * tokens_per_step, "resumed_from": start_step, "pid": os.getpid()}
        if done % args.checkpoint_every == 0 and done < total_steps:
            _checkpoint(strategy, metrics, rank)
        _show(args, rank, metrics)
    elapsed = time.perf_counter() - started
    final = {  # loss is None when a relaunch found the run already at its last step
        "step": total_steps, "total_steps": total_steps, "loss": losses[-1] if losses else None,
        "loss_mean_last_10": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "loss_first": losses[0] if losses else None,  # this launch's first step: with `loss`, did training help?
        "rank_weight_spread": _rank_spread(strategy, peft_model, world),
        "resumed_from": start_step, "tokens": total_steps * tokens_per_step, "num_blocks": len(blocks),
        "train_seconds": elapsed, "tokens_per_s": tokens_per_step * (total_steps - start_step) / elapsed,
        "pid": os.getpid(),
    }
    _checkpoint(strategy, final, rank, peft_model=peft_model, identity=identity.model_dump_json())
    _show(args, rank, {**final, "finished": True})


def _resume(strategy) -> int:
    """Load the latest checkpoint Ray Train hands this attempt (after a worker restart or a driver restart)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        strategy.load(Path(folder))
        return int(json.loads((Path(folder) / STATE_FILE).read_text())["step"])


def _checkpoint(strategy, metrics: dict, rank: int, *, peft_model=None, identity: str | None = None) -> None:
    """Save (weights, optimizer, step) and report it; the final one adds the adapter and base identity.

    Every rank calls ray.train.report (it is a barrier); Ray Train merges the ranks' folders into one checkpoint.
    """
    import ray.train

    with tempfile.TemporaryDirectory(prefix="lerpray-ckpt-") as tmp:
        folder = Path(tmp)
        wrote = strategy.save(folder, rank)
        if peft_model is not None:
            wrote = strategy.save_adapter(peft_model, folder / ADAPTER_DIR, rank) or wrote
        if rank == 0:
            (folder / STATE_FILE).write_text(json.dumps({"step": metrics["step"]}))
            if identity is not None:
                (folder / IDENTITY_FILE).write_text(identity)
            wrote = True
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if wrote else None
        ray.train.report(metrics, checkpoint=checkpoint)


def _show(args: WorkerArgs, rank: int, metrics: dict) -> None:
    """Send rank 0's progress to the driver's board (fire and forget: on a dead board's handle `.remote()` returns
    at once and never raises here, so a lost board never fails training)."""
    if rank == 0 and args.progress is not None:
        args.progress.update.remote(args.anchor, metrics)


def _mean_across_ranks(value: float, world: int) -> float:
    if world == 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)  # gloo/nccl; a 1-element all-reduce per step is negligible next to the gradients
    return float(tensor.item()) / world


def _rank_spread(strategy, peft_model, world: int) -> float | None:
    """How far the ranks' LoRA weights drifted apart: the largest difference between ranks of (sum, sum of squares)
    over the trainable parameters; 0.0 when DDP kept every rank's copy identical, as it must. None under DeepSpeed,
    whose ZeRO stages shard the parameters (each rank holds different pieces by design)."""
    if world == 1:
        return 0.0
    if not isinstance(strategy, TorchStrategy):
        return None
    import torch.distributed as dist

    params = [p.detach().double() for p in peft_model.parameters() if p.requires_grad]
    fingerprint = torch.stack([sum(p.sum() for p in params), sum((p * p).sum() for p in params)])  # [2]
    high, low = fingerprint.clone().to(strategy.device), fingerprint.clone().to(strategy.device)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).abs().max())


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63)

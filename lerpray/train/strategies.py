"""The two training strategies a worker steps its LoRA model with: plain torch (DDP via Ray Train) and DeepSpeed
ZeRO 2/3, plus the learning-rate schedule both use.

Both expose the same five operations to the loop in worker.py: micro_step (forward + backward of one micro-batch),
optimizer_step, save / load of the resumable state, and save_adapter (the PEFT folder that gets published).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from lerpray.train.worker_args import WorkerArgs

__all__ = ["DeepSpeedStrategy", "TorchStrategy", "build_strategy", "deepspeed_config", "lr_lambda"]

_TRAINABLE_FILE = "trainable.safetensors"
_OPTIMIZER_FILE = "optimizer.pt"
_DEEPSPEED_DIR = "deepspeed"
_DEEPSPEED_TAG = "state"


def build_strategy(peft_model, args: WorkerArgs, *, total_steps: int) -> TorchStrategy | DeepSpeedStrategy:
    """Wrap `peft_model` for this worker: DeepSpeed when `args.deepspeed_stage` is set, else DDP."""
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(args.lr_schedule, args.warmup_steps, total_steps)
    )
    if args.deepspeed_stage is not None:
        return DeepSpeedStrategy(peft_model, optimizer, scheduler, args)
    return TorchStrategy(peft_model, optimizer, scheduler, args)


class TorchStrategy:
    """DDP across the anchor's workers (ray.train.torch.prepare_model; no wrapper with one worker)."""

    def __init__(self, peft_model, optimizer, scheduler, args: WorkerArgs):
        import ray.train.torch

        self.peft_model = peft_model
        self.model = ray.train.torch.prepare_model(peft_model)
        self.device = ray.train.torch.get_device()
        self.optimizer, self.scheduler = optimizer, scheduler
        self.max_grad_norm, self.grad_accum, self.use_gpu = args.max_grad_norm, args.grad_accum, args.use_gpu

    def micro_step(self, batch: torch.Tensor, *, last: bool) -> float:
        sync = last or not hasattr(self.model, "no_sync")  # all-reduce gradients once per optimizer step
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.use_gpu else contextlib.nullcontext()
        with contextlib.nullcontext() if sync else self.model.no_sync():
            with autocast:
                loss = self.model(input_ids=batch, labels=batch).loss
            (loss / self.grad_accum).backward()  # summed over micro-steps = gradient of the mean loss
        return float(loss.detach())

    def optimizer_step(self) -> None:
        if self.max_grad_norm is not None:
            params = [p for p in self.peft_model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, folder: Path, rank: int) -> bool:
        if rank != 0:  # DDP keeps every rank identical; one copy is enough
            return False
        from safetensors.torch import save_file

        trainable = {n: p.detach().cpu().contiguous() for n, p in self.peft_model.named_parameters() if p.requires_grad}
        save_file(trainable, str(folder / _TRAINABLE_FILE))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   folder / _OPTIMIZER_FILE)
        return True

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        trainable = load_file(str(folder / _TRAINABLE_FILE), device=str(self.device))
        missing = self.peft_model.load_state_dict(trainable, strict=False).unexpected_keys
        if missing:
            raise RuntimeError(f"checkpoint {folder} holds parameters this model lacks: {missing[:3]}")
        state = torch.load(folder / _OPTIMIZER_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_adapter(self, peft_model, folder: Path, rank: int) -> bool:
        if rank == 0:
            peft_model.save_pretrained(str(folder))  # adapter_config.json + adapter_model.safetensors
        return rank == 0


class DeepSpeedStrategy:
    """DeepSpeed ZeRO stage 2 or 3 (optionally offloading optimizer state to CPU) around the torch optimizer."""

    def __init__(self, peft_model, optimizer, scheduler, args: WorkerArgs):
        import deepspeed
        import ray.train.torch

        self.stage = args.deepspeed_stage
        self.device = ray.train.torch.get_device()
        config = deepspeed_config(args)
        with contextlib.nullcontext() if args.use_gpu else _without_shm_comm_op():
            self.model, _, _, _ = deepspeed.initialize(
                model=peft_model.to(self.device), optimizer=optimizer, lr_scheduler=scheduler, config=config
            )

    def micro_step(self, batch: torch.Tensor, *, last: bool) -> float:
        loss = self.model(input_ids=batch, labels=batch).loss
        self.model.backward(loss)  # scales by 1/grad_accum itself
        self.model.step()  # an optimizer step only at the accumulation boundary
        return float(loss.detach())

    def optimizer_step(self) -> None:
        """DeepSpeed stepped inside the last micro_step (at its gradient-accumulation boundary)."""

    def save(self, folder: Path, rank: int) -> bool:
        # Every rank writes its own ZeRO shard; Ray Train merges the ranks' folders into one checkpoint.
        self.model.save_checkpoint(str(folder / _DEEPSPEED_DIR), tag=_DEEPSPEED_TAG, exclude_frozen_parameters=True)
        return True

    def load(self, folder: Path) -> None:
        path, _ = self.model.load_checkpoint(str(folder / _DEEPSPEED_DIR), tag=_DEEPSPEED_TAG, load_module_strict=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {folder / _DEEPSPEED_DIR}")

    def save_adapter(self, peft_model, folder: Path, rank: int) -> bool:
        import deepspeed

        params = [p for p in peft_model.parameters() if p.requires_grad]
        gather = deepspeed.zero.GatheredParameters(params) if self.stage == 3 else contextlib.nullcontext()
        with gather:  # ZeRO-3 shards parameters; gather the LoRA factors (all ranks enter) before saving
            if rank == 0:
                peft_model.save_pretrained(str(folder))
        return rank == 0


@contextlib.contextmanager
def _without_shm_comm_op():
    """Start DeepSpeed's CPU comm backend without its shared-memory all-reduce op.

    The op only speeds up DeepSpeed-inference all-reduces (training reduces through gloo), yet the backend JIT-builds
    it in C++ on first use: ~50 s on every new CPU node. Without it DeepSpeed falls back to torch.distributed.
    """
    import importlib

    # Not `import deepspeed.comm.torch as backend`: the package's own `torch` attribute (plain torch) shadows it.
    backend = importlib.import_module("deepspeed.comm.torch")
    build = backend.build_shm_op
    backend.build_shm_op = lambda: None
    try:
        yield
    finally:
        backend.build_shm_op = build


def deepspeed_config(args: WorkerArgs) -> dict:
    """The DeepSpeed JSON config for one anchor's workers."""
    zero: dict = {"stage": args.deepspeed_stage}
    if args.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": args.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": args.grad_accum,
        "gradient_clipping": args.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": args.use_gpu},
        # Keep our torch AdamW with offload: DeepSpeedCPUAdam would need a C++ build on every new machine.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
    }


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier of the base learning rate at optimizer step `s` (0-based): linear warmup, then the schedule."""

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / (warmup_steps + 1)
        progress = (s - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor

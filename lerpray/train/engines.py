"""The two ways a worker steps its LoRA model: plain torch (DDP via Ray Train) and DeepSpeed ZeRO 2/3.

Both expose the same five operations to the loop in worker.py: micro_step (forward + backward of one micro-batch),
optimizer_step, save / load of the resumable state, and save_adapter (the PEFT folder that gets published).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lerpray.train.worker import WorkerArgs

_TRAINABLE_FILE = "trainable.safetensors"
_OPTIMIZER_FILE = "optimizer.pt"
_DEEPSPEED_DIR = "deepspeed"
_DEEPSPEED_TAG = "state"


def build_engine(peft_model, args: WorkerArgs, *, total_steps: int, world_size: int):
    """Wrap `peft_model` for this worker: DeepSpeed when `args.deepspeed_stage` is set, else DDP."""
    from lerpray.train.worker import lr_lambda

    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(args.lr_schedule, args.warmup_steps, total_steps)
    )
    if args.deepspeed_stage is not None:
        return DeepSpeedEngine(peft_model, optimizer, scheduler, args)
    return TorchEngine(peft_model, optimizer, scheduler, args)


class TorchEngine:
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


class DeepSpeedEngine:
    """DeepSpeed ZeRO stage 2 or 3 (optionally offloading optimizer state to CPU) around the torch optimizer."""

    def __init__(self, peft_model, optimizer, scheduler, args: WorkerArgs):
        import deepspeed
        import ray.train.torch

        self.stage = args.deepspeed_stage
        self.device = ray.train.torch.get_device()
        config = deepspeed_config(args)
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

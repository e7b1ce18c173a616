"""What one anchor's workers need, as flat values: built by the driver from the job config (driver.worker_args),
read by the per-worker loop (worker.py) and its training strategy (strategies.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["WorkerArgs"]


@dataclass(frozen=True)
class WorkerArgs:
    """Everything one anchor's workers need, as flat values (built by the driver from the job config)."""

    anchor: str
    base_model: str | None
    data_paths: tuple[str, ...]
    text_field: str
    data_format: str
    r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: tuple[str, ...]
    use_rslora: bool
    block_size: int
    batch_size: int
    grad_accum: int
    learning_rate: float
    lr_schedule: str
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float | None
    epochs: float
    max_steps: int | None
    seed: int
    checkpoint_every: int
    deepspeed_stage: int | None = None
    offload_optimizer: bool = False
    use_gpu: bool = False
    s3_options: dict[str, str | None] = field(default_factory=dict)  # endpoint_url / region / profile for s3:// data
    progress: Any = None  # a progress.ProgressBoard actor handle, or None

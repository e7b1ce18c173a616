"""Anchor training on Ray Train: a job YAML -> one TorchTrainer per anchor (DDP or DeepSpeed ZeRO), run
concurrently -> PEFT adapters + manifest published to a local folder or an object store.

config.py validates the job YAML; packing.py tokenises and packs the texts (read by lerpray.data.text_io);
worker.py (with strategies.py: DDP or DeepSpeed) is the per-worker loop; driver.py fans anchors out and publishes;
progress.py shows it; commands.py is `lerpray train`. Ray is imported lazily.
"""

import importlib

# Imported on first use (PEP 562): `lerpray --help` and config validation must not pay for torch.
_LAZY = {
    **dict.fromkeys(
        ("AnchorSpec", "ConfigError", "DeepSpeedSettings", "LoraSettings", "ResourceSettings", "TrainingSettings",
         "TrainJobConfig", "load_train_config", "parse_train_config"),
        "lerpray.train.config",
    ),
    **dict.fromkeys(("BlockSchedule", "pack_blocks"), "lerpray.train.packing"),
    **dict.fromkeys(("TrainingFailed", "TrainOutcome", "train_anchors"), "lerpray.train.driver"),
}

__all__ = [
    "AnchorSpec",
    "BlockSchedule",
    "ConfigError",
    "DeepSpeedSettings",
    "LoraSettings",
    "ResourceSettings",
    "TrainJobConfig",
    "TrainOutcome",
    "TrainingFailed",
    "TrainingSettings",
    "load_train_config",
    "pack_blocks",
    "parse_train_config",
    "train_anchors",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lerpray.train' has no attribute {name!r}")

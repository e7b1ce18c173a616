"""Anchor training on Ray Train: a job YAML -> one TorchTrainer per anchor (DDP or DeepSpeed ZeRO), run
concurrently -> PEFT adapters + manifest published to a local folder or an object store.

config.py validates the job YAML; data.py reads, tokenises and packs the texts; worker.py (with engines.py) is the
per-worker loop; driver.py fans anchors out and publishes; commands.py is `lerpray train`. Ray is imported lazily.
"""

from lerpray.train.config import (
    AnchorSpec,
    ConfigError,
    DeepSpeedSettings,
    LoraSettings,
    ResourceSettings,
    TrainingSettings,
    TrainJobConfig,
    load_train_config,
    parse_train_config,
)
from lerpray.train.data import BlockSchedule, DataError, pack_blocks, read_texts
from lerpray.train.driver import TrainingFailed, TrainOutcome, train_anchors

__all__ = [
    "AnchorSpec",
    "BlockSchedule",
    "ConfigError",
    "DataError",
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
    "read_texts",
    "train_anchors",
]

"""The training job config: one YAML names the base model, the attributes with their two poles and their data, the
LoRA and training settings, the Ray resources and where the anchor set goes.

Validated by pydantic at the edge (`load_train_config`); the rest of lerpray.train receives flat values taken from
it. Defaults are the paper's (Kangaslahti & Alvarez-Melis 2024, section 4): LoRA r=32, lora_alpha=16, dropout 0.1 on
q/k/v/o projections. Each anchor may override any `lora` or `training` field; unset fields fall back to the
top-level sections. jobs/configs/train_local.yaml explains every field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from lerpray.configs import S3Settings, StrictModel, UriList, check_uri, read_yaml, validate_config

PAPER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # attribute / pole / run id: safe in URIs, paths and Ray run names

Name = Annotated[str, Field(pattern=_NAME, max_length=64)]


class ConfigError(ValueError):
    """The training config is unreadable or invalid; the message lists every problem with its field path."""


class LoraSettings(StrictModel):
    r: int = Field(32, gt=0)
    lora_alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(PAPER_TARGETS), min_length=1)
    use_rslora: bool = False


class TrainingSettings(StrictModel):
    block_size: int = Field(128, gt=1)
    batch_size: int = Field(8, gt=0)  # blocks per worker per micro-step
    grad_accum: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    epochs: float = Field(1.0, gt=0)  # passes over the packed blocks
    max_steps: int | None = Field(None, gt=0)  # optimizer steps; when set it replaces `epochs`
    seed: int = 0  # data order, LoRA init and dropout


class DataSpec(StrictModel):
    paths: UriList  # files or folders, local or s3://bucket/key
    text_field: str = "text"  # the JSONL field holding the text
    format: Literal["auto", "jsonl", "text"] = "auto"  # auto: by extension (.jsonl/.json vs anything else)



class AnchorSpec(StrictModel):
    attribute: Name
    pole: Name
    data: DataSpec
    lora: LoraSettings
    training: TrainingSettings
    workers: int | None = Field(None, gt=0)  # DDP/DeepSpeed workers of this anchor; None = resources.workers_per_anchor
    # Custom Ray resources each worker needs, e.g. {"node_a": 1} to place this anchor on nodes that offer them
    worker_resources: dict[str, float] = {}

    @property
    def name(self) -> str:
        return f"{self.attribute}.{self.pole}"


class PolesSpec(StrictModel):
    high: Name  # the pole fully active at alpha = 1
    low: Name  # the pole fully active at alpha = 0


class ResourceSettings(StrictModel):
    workers_per_anchor: int = Field(1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)  # used only with use_gpu
    max_concurrent_anchors: int | None = Field(None, gt=0)  # None: as many as the cluster fits


class DeepSpeedSettings(StrictModel):
    stage: Literal[2, 3]
    offload_optimizer: bool = False


class TrainJobConfig(StrictModel):
    run_id: Name | None = None  # names the Ray runs; reuse it to resume an interrupted job from its checkpoints
    base_model: str | None = None  # local HF folder or hub id; None = the bundled SmolLM2-135M-Instruct
    attributes: dict[Name, PolesSpec] = Field(min_length=1)
    lora: LoraSettings = LoraSettings()
    training: TrainingSettings = TrainingSettings()
    anchors: list[AnchorSpec] = Field(min_length=2)
    resources: ResourceSettings = ResourceSettings()
    deepspeed: DeepSpeedSettings | None = None
    checkpoint_every: int = Field(50, gt=0)  # optimizer steps between checkpoints
    keep_checkpoints: int = Field(2, gt=0)
    max_failures: int = Field(2, ge=0)  # worker-group restarts per anchor before the run fails
    output: str  # anchor-set URI: s3://bucket/prefix/name or a local folder
    versioned: bool = False  # publish a new immutable version of the set at `output` (and move `latest`)
    extends: str | None = None  # a set (URI@VERSION / URI@ALIAS) whose anchors the new version carries unchanged
    storage_path: str | None = None  # Ray Train checkpoints: s3://... or a local/shared folder; None = Ray's default
    s3: S3Settings = S3Settings()  # profile: anchor-set and data I/O; Ray's checkpoint I/O reads AWS_PROFILE

    @model_validator(mode="before")
    @classmethod
    def _inherit_sections(cls, data: Any) -> Any:
        """Give each anchor the top-level lora/training fields it does not override."""
        if not isinstance(data, dict) or not isinstance(data.get("anchors"), list):
            return data
        if data.get("deepspeed") in (False, "off", "none"):
            data = {**data, "deepspeed": None}
        merged = []
        for anchor in data["anchors"]:
            if isinstance(anchor, dict):
                anchor = dict(anchor)
                for section in ("lora", "training"):
                    top, own = data.get(section) or {}, anchor.get(section) or {}
                    if isinstance(top, dict) and isinstance(own, dict):
                        anchor[section] = {**top, **own}
            merged.append(anchor)
        return {**data, "anchors": merged}

    @field_validator("output", "storage_path")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value)

    @model_validator(mode="after")
    def _extends_versioned(self) -> TrainJobConfig:
        if self.extends is not None and not self.versioned:
            raise ValueError("extends: extending publishes a new version; set `versioned: true` too")
        return self

    @model_validator(mode="after")
    def _poles_match(self) -> TrainJobConfig:
        problems = _pole_problems(self.attributes, self.anchors)
        if problems:
            raise ValueError("\n".join(dict.fromkeys(problems)))  # one line per problem, each with its path
        return self

    @property
    def anchor_names(self) -> list[str]:
        return [a.name for a in self.anchors]


def _pole_problems(attributes: dict[str, PolesSpec], anchors: list[AnchorSpec]) -> list[str]:
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, anchor in enumerate(anchors):
        poles = attributes.get(anchor.attribute)
        if poles is None:
            problems.append(f"anchors.{i}.attribute: {anchor.attribute!r} is not declared under `attributes`")
        elif anchor.pole not in (poles.high, poles.low):
            problems.append(f"anchors.{i}.pole: {anchor.pole!r} is neither {poles.high!r} (high) nor "
                            f"{poles.low!r} (low) of attribute {anchor.attribute!r}")
        if anchor.name in seen:
            problems.append(f"anchors.{i}: anchor {anchor.name!r} is listed twice (also anchors.{seen[anchor.name]})")
        seen.setdefault(anchor.name, i)
    for attribute, poles in attributes.items():
        if poles.high == poles.low:
            problems.append(f"attributes.{attribute}: high and low poles must differ (both {poles.high!r})")
        for pole in (poles.high, poles.low):
            if f"{attribute}.{pole}" not in seen:
                problems.append(f"attributes.{attribute}: no anchor trains pole {pole!r}; add one under `anchors`")
    return problems


def load_train_config(path: str | Path) -> TrainJobConfig:
    """Read and validate a training job YAML.

    Raises:
        ConfigError: the file is missing or not YAML, or the config is invalid (every problem, with its path).
    """
    return parse_train_config(read_yaml(path, "training config", ConfigError), source=str(path))


def parse_train_config(raw: Any, source: str = "config") -> TrainJobConfig:
    """Validate an already-parsed config mapping; see `load_train_config`. An anchor's copy of a bad top-level
    lora/training field is reported once, at the top (cross-field problems carry their own paths)."""
    return validate_config(TrainJobConfig, raw, source, ConfigError, skip=_inherited)


def _inherited(problem: dict, err: ValidationError) -> bool:
    loc, msg = problem["loc"], problem["msg"]
    if not (len(loc) > 3 and loc[0] == "anchors" and loc[2] in ("lora", "training")):
        return False
    return any(".".join(map(str, e["loc"])) == ".".join(map(str, loc[2:])) and e["msg"] == msg
               for e in err.errors(include_url=False))  # fmt: skip

"""The batch-generation job config: where the prompts are, which mixes, how to sample, the actor pool, where the
output goes. Validated by pydantic at the edge (`load_batch_config`); lerpray.batch.pipeline receives it whole and
hands flat values on to the plan and the actors.

jobs/configs/batch_local.yaml explains every field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, JsonValue, field_validator, model_validator

from lerpray.configs import (
    BaseModelOverride,
    BoundsArgs,
    S3Settings,
    SamplingSettings,
    StrictModel,
    Uri,
    UriList,
    read_yaml,
    validate_config,
)
from lerpray.kv_config import KVCacheArgs

__all__ = ["BatchConfigError", "BatchJobConfig", "load_batch_config", "parse_batch_config"]

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class BatchConfigError(ValueError):
    """The batch config is unreadable or invalid; the message lists every problem with its field path."""


class InputSpec(StrictModel):
    paths: UriList  # files or folders, local or s3://bucket/prefix
    format: Literal["auto", "jsonl", "parquet"] = "auto"  # auto: by the first path's extension
    prompt_field: str = Field("prompt", pattern=_FIELD.pattern)
    mix_field: str = Field("interpolation", pattern=_FIELD.pattern)  # per-row mix (object or JSON string)
    seed_field: str = Field("seed", pattern=_FIELD.pattern)  # optional per-row seed
    chat: bool = False  # send each prompt as a user message through the tokenizer's chat template

    def resolved_format(self) -> Literal["jsonl", "parquet"]:
        if self.format != "auto":
            return self.format
        first = self.paths[0].rstrip("/")
        if first.endswith((".parquet", ".pq")):
            return "parquet"
        if first.endswith((".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz")):
            return "jsonl"
        raise ValueError(f"cannot tell the format of {self.paths[0]!r} from its name; set input.format to "
                         "jsonl or parquet")


class BatchSampling(SamplingSettings):
    seed: int = Field(0, ge=0)  # base seed: row i samples with hash(seed, i) unless the row gives its own


class ResourceSpec(StrictModel, KVCacheArgs):
    """The actor pool, and each actor's engine (its KV-cache budget and context length: lerpray.kv_config)."""

    num_actors: int = Field(1, ge=1)  # fixed size of the actor pool; each actor loads the engine once
    batch_size: int = Field(16, ge=1)  # rows per actor call, decoded together (the engine's max batch size)
    num_cpus_per_actor: float = Field(1.0, gt=0)
    num_gpus_per_actor: float = Field(0.0, ge=0)  # > 0: the engine runs on cuda
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_restarts: int = Field(3, ge=-1)  # restarts of a dead actor (-1 = unlimited)
    max_task_retries: int = Field(3, ge=-1)  # re-runs of a batch whose actor died (-1 = unlimited)


class OutputSpec(StrictModel):
    path: Uri  # a folder, local or s3://bucket/prefix
    format: Literal["parquet", "jsonl"] = "parquet"
    overwrite: bool = False  # delete what is in `path` first; otherwise a non-empty `path` is refused
    min_rows_per_file: int | None = Field(None, ge=1)  # fewer, larger files; None = one file per batch


class BatchJobConfig(StrictModel):
    anchors: Uri  # anchor-set URI: a local folder or s3://bucket/prefix
    base_model: BaseModelOverride = None
    input: InputSpec
    # a grid crossed with every prompt: each an `interpolation` object, resolved against the set by the plan
    mixes: list[dict[str, JsonValue]] | None = Field(None, min_length=1)
    sampling: BatchSampling = BatchSampling()
    extrapolation: BoundsArgs | None = Field(default_factory=BoundsArgs)  # null: "extrapolate": true refused
    resources: ResourceSpec = ResourceSpec()
    output: OutputSpec
    s3: S3Settings = S3Settings()
    progress: bool = True  # Ray Data's progress bars

    @model_validator(mode="after")
    def _known_format(self) -> BatchJobConfig:
        self.input.resolved_format()
        return self

    @model_validator(mode="after")
    def _kv_fits_device(self) -> BatchJobConfig:
        res = self.resources
        on_cuda = res.num_gpus_per_actor > 0
        res.check_kv_device(on_cuda, "cuda" if on_cuda else "the CPU (resources.num_gpus_per_actor is 0)",
                            ("sampling.max_tokens", self.sampling.max_tokens), prefix="resources.")
        return self

    @field_validator("s3")
    @classmethod
    def _no_profile(cls, s3: S3Settings) -> S3Settings:
        if s3.profile is not None:
            raise ValueError("profile is not supported by batch jobs: Ray Data's S3 filesystem takes its credentials "
                             "from the environment; remove s3.profile and set AWS_PROFILE (or AWS keys) instead")
        return s3


def load_batch_config(path: str | Path) -> BatchJobConfig:
    """Read and validate a batch job YAML.

    Raises:
        BatchConfigError: the file is missing or not YAML, or the config is invalid (every problem, with its path).
    """
    return parse_batch_config(read_yaml(path, "batch config", BatchConfigError), source=str(path))


def parse_batch_config(raw: Any, source: str = "config") -> BatchJobConfig:
    """Validate an already-parsed config mapping; see `load_batch_config`."""
    return validate_config(BatchJobConfig, raw, source, BatchConfigError)

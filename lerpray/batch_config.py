"""The batch-generation job config: where the prompts are, which mixes, how to sample, the actor pool, where the
output goes. Validated by pydantic at the edge (`load_batch_config`); lerpray.batch receives flat values from it.

jobs/configs/batch_local.yaml explains every field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lerpray.config_io import read_yaml, validate_config
from lerpray.serve.config import BoundsArgs

__all__ = ["BatchConfigError", "BatchJobConfig", "load_batch_config", "parse_batch_config"]

_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class BatchConfigError(ValueError):
    """The batch config is unreadable or invalid; the message lists every problem with its field path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    paths: list[str] = Field(min_length=1)  # files or folders, local or s3://bucket/prefix
    format: Literal["auto", "jsonl", "parquet"] = "auto"  # auto: by the first path's extension
    prompt_field: str = Field("prompt", pattern=_FIELD.pattern)
    mix_field: str = Field("interpolation", pattern=_FIELD.pattern)  # per-row mix (object or JSON string)
    seed_field: str = Field("seed", pattern=_FIELD.pattern)  # optional per-row seed
    chat: bool = False  # send each prompt as a user message through the tokenizer's chat template

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("paths")
    @classmethod
    def _uris(cls, paths: list[str]) -> list[str]:
        return [check_uri(p) for p in paths]

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


class SamplingSpec(_Strict):
    temperature: float = Field(0.7, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # 0 = off
    max_tokens: int = Field(128, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int = Field(0, ge=0)  # base seed: row i samples with hash(seed, i) unless the row gives its own


class ResourceSpec(_Strict):
    num_actors: int = Field(1, ge=1)  # fixed size of the actor pool; each actor loads the engine once
    batch_size: int = Field(16, ge=1)  # rows per actor call, decoded together (the engine's max batch size)
    num_cpus_per_actor: float = Field(1.0, gt=0)
    num_gpus_per_actor: float = Field(0.0, ge=0)  # > 0: the engine runs on cuda
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_restarts: int = Field(3, ge=-1)  # restarts of a dead actor (-1 = unlimited)
    max_task_retries: int = Field(3, ge=-1)  # re-runs of a batch whose actor died (-1 = unlimited)


class OutputSpec(_Strict):
    path: str  # a folder, local or s3://bucket/prefix
    format: Literal["parquet", "jsonl"] = "parquet"
    overwrite: bool = False  # delete what is in `path` first; otherwise a non-empty `path` is refused
    min_rows_per_file: int | None = Field(None, ge=1)  # fewer, larger files; None = one file per batch

    @field_validator("path")
    @classmethod
    def _uri(cls, value: str) -> str:
        return check_uri(value)


class S3Spec(_Strict):
    """Connection to an S3-compatible store; unset fields come from the standard AWS environment."""

    endpoint_url: str | None = None  # e.g. http://minio:9000; default AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
    region: str | None = None  # default AWS_REGION / AWS_DEFAULT_REGION


class BatchJobConfig(_Strict):
    anchors: str  # anchor-set URI: a local folder or s3://bucket/prefix
    base_model: str | None = None  # override of the base model the manifest names
    input: InputSpec
    mixes: list[dict[str, Any]] | None = Field(None, min_length=1)  # a grid crossed with every prompt
    sampling: SamplingSpec = SamplingSpec()
    extrapolation: BoundsArgs | None = Field(default_factory=BoundsArgs)  # null: "extrapolate": true refused
    resources: ResourceSpec = ResourceSpec()
    output: OutputSpec
    s3: S3Spec = S3Spec()
    progress: bool = True  # Ray Data's progress bars

    @field_validator("anchors")
    @classmethod
    def _anchors_uri(cls, value: str) -> str:
        return check_uri(value)

    @model_validator(mode="after")
    def _known_format(self) -> BatchJobConfig:
        self.input.resolved_format()
        return self


def check_uri(uri: str) -> str:
    """An s3:// URI or a local path; anything else is refused with what is supported."""
    if uri.startswith("s3://"):
        if not _S3_URI.match(uri):
            raise ValueError(f"{uri!r} is not an S3 URI like s3://bucket/prefix (bucket: 3-63 lowercase chars)")
        return uri
    if "://" in uri:
        raise ValueError(f"{uri!r}: only s3:// URIs and local paths are supported")
    if not uri.strip():
        raise ValueError("empty path")
    return uri


def load_batch_config(path: str | Path) -> BatchJobConfig:
    """Read and validate a batch job YAML.

    Raises:
        BatchConfigError: the file is missing or not YAML, or the config is invalid (every problem, with its path).
    """
    return parse_batch_config(read_yaml(path, "batch config", BatchConfigError), source=str(path))


def parse_batch_config(raw: Any, source: str = "config") -> BatchJobConfig:
    """Validate an already-parsed config mapping; see `load_batch_config`."""
    return validate_config(BatchJobConfig, raw, source, BatchConfigError)

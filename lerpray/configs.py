"""The pieces every job config shares, and the one recipe for reading a config file.

    StrictModel       base of every config section: unknown fields refused, values frozen
    SamplingSettings  how to sample: the one vocabulary of sampling settings, with the one default of each
    BoundsArgs        where a request that sets `"extrapolate": true` may go
    S3Settings        the connection to an S3-compatible store (unset fields: the standard AWS environment)
    check_uri         an s3://bucket/prefix URI (bucket named by BUCKET_NAME's rule) or a local path
    Uri, UriList      one URI or a list of them (`paths:` of inputs and training data), each checked by check_uri
    BaseModelOverride a base model (local folder, hub id or bundled:NAME) in place of the one a set's manifest names
    absolute_uri      a local path made absolute for workers that run elsewhere; a URI as is (absolute_base_model:
                      the same for a base model that is a local folder; a hub id or bundled name as is)
    check_shared      refuse a local path where several nodes must see one location (a multi-node cluster)
    read_yaml, validate_config, problem_lines    YAML file -> pydantic model, every problem with its field path

Train (lerpray/train/config.py), batch (lerpray/batch/config.py), eval sweeps (lerpray/eval/config.py) and serving
(lerpray/serve/config.py) build their configs from these. Pydantic and the standard library only: validating a
config never loads torch or Ray.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from lerpray.mixing import ExtrapolationBounds

__all__ = [
    "BUCKET_NAME",
    "BaseModelOverride",
    "BoundsArgs",
    "S3Settings",
    "SamplingSettings",
    "StrictModel",
    "Uri",
    "UriList",
    "absolute_base_model",
    "absolute_uri",
    "check_shared",
    "check_uri",
    "problem_lines",
    "read_yaml",
    "validate_config",
]

# S3 bucket naming rule (3-63 characters: lowercase letters, digits, dots, hyphens; letter or digit at both ends).
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

Model = TypeVar("Model", bound=BaseModel)


class StrictModel(BaseModel):
    """A config section: a misspelt field is an error (not silently ignored), and a loaded config is not edited."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingSettings(StrictModel):
    """How to sample, in the engine's terms (lerpray.model.sampling.SamplingParams); the defaults of batch jobs and
    eval sweeps. HTTP requests leave unset fields to OpenAI's defaults instead (lerpray/serve/protocol.py)."""

    temperature: float = Field(0.7, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)  # nucleus mass; 1 = off
    top_k: int = Field(0, ge=0)  # 0 = off
    max_tokens: int = Field(128, ge=1)  # tokens generated per row, at most
    min_tokens: int = Field(0, ge=0)  # no EOS or stop string before this many tokens (at most max_tokens)
    stop: list[str] = Field(default_factory=list)  # stop strings; the text is cut before the first one

    @model_validator(mode="after")
    def _min_within_max(self) -> SamplingSettings:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must be at most max_tokens ({self.max_tokens})")
        return self

    def engine_kwargs(self) -> dict[str, Any]:
        """The fields as SamplingParams takes them (stop strings as a tuple), without a seed: each row has its own."""
        return {**self.model_dump(exclude={"seed"}), "stop": tuple(self.stop)}


# Calibration replies run at least 32 tokens: the anchors' effect grows along a reply and most free replies end within
# ~11 tokens, so forcing the length roughly doubled formality's alpha 0 -> 1 change and tripled humor's on the
# reproduction set (docs/steering.md). Target requests that set no min_tokens get the calibration's.
CALIBRATION_MAX_TOKENS, CALIBRATION_MIN_TOKENS = 48, 32


class BoundsArgs(StrictModel):
    """Where a request that sets `"extrapolate": true` may go (the paper calls alpha in [-1, 2] stable)."""

    alpha_min: float = -1.0
    alpha_max: float = 2.0
    weight_min: float = -1.0
    weight_max: float = 2.0

    @model_validator(mode="after")
    def _contains_unit_interval(self) -> BoundsArgs:
        self.to_bounds()  # raises ValueError (-> pydantic ValidationError) if a range does not contain [0, 1]
        return self

    def to_bounds(self) -> ExtrapolationBounds:
        return ExtrapolationBounds(self.alpha_min, self.alpha_max, self.weight_min, self.weight_max)


class S3Settings(StrictModel):
    """Connection to an S3-compatible store; unset fields come from the standard AWS environment."""

    endpoint_url: str | None = None  # e.g. http://minio:9000; default AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
    region: str | None = None  # default AWS_REGION / AWS_DEFAULT_REGION
    profile: str | None = None  # default AWS_PROFILE

    def options(self) -> dict[str, str]:
        """The fields that are set, as keyword arguments of lerpray.anchors.open_store."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


def check_uri(uri: str) -> str:
    """An s3:// URI or a local path; anything else is refused with what is supported."""
    if uri.startswith("s3://"):
        bucket = uri.removeprefix("s3://").split("/", 1)[0]
        if not BUCKET_NAME.match(bucket):
            raise ValueError(f"{uri!r} is not an S3 URI like s3://bucket/prefix (bucket: 3-63 lowercase chars)")
        return uri
    if "://" in uri:
        raise ValueError(f"{uri!r}: only s3:// URIs and local paths are supported")
    if not uri.strip():
        raise ValueError("empty path")
    return uri


def absolute_uri(uri: str) -> str:
    """A local path made absolute (actors, replicas and workers do not run in this directory); a URI as is."""
    return uri if "://" in uri else str(Path(uri).expanduser().absolute())


Uri = Annotated[str, AfterValidator(check_uri)]
def absolute_base_model(name: str | None) -> str | None:
    """A base model that is a local folder, made absolute (workers run elsewhere); a hub id or bundled name as is."""
    return absolute_uri(name) if name and Path(name).expanduser().exists() else name


UriList = Annotated[
    list[str],
    BeforeValidator(lambda value: [value] if isinstance(value, str) else value),  # one path may be given bare
    AfterValidator(lambda paths: [check_uri(p) for p in paths]),
    Field(min_length=1),
]
BaseModelOverride = Annotated[
    str | None, Field(min_length=1, description="base model override (local folder, hub id or bundled:NAME); "
                      "default: the one the anchor set's manifest names"),  # fmt: skip
]


def read_yaml(path: str | Path, what: str, error: type[ValueError]) -> Any:
    """The parsed YAML of `path`; `error` names the file and says why it could not be read."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise error(f"{path} is not valid YAML: {err}") from err


def problem_lines(err: ValidationError, skip: Callable[[dict], bool] = lambda problem: False) -> list[str]:
    """One `  field.path: message` line per pydantic problem (problems for which `skip` is true are left out)."""
    lines = []
    for problem in err.errors(include_url=False):
        if skip(problem):
            continue
        loc = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field (check its spelling and section)"
        for part in message.splitlines() if not loc else [message]:
            lines.append(f"  {loc}: {part}" if loc else f"  {part}")
    return lines


def validate_config(model: type[Model], raw: Any, source: str, error: type[ValueError],
                    skip: Callable[[dict, ValidationError], bool] | None = None) -> Model:  # fmt: skip
    """`model` validated from `raw`; `error` lists every problem with its field path (but those `skip(problem, err)`
    says another line already covers)."""
    if not isinstance(raw, dict):
        raise error(f"{source}: the top level must be a mapping of fields, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        lines = problem_lines(err) if skip is None else problem_lines(err, functools.partial(_skipped, skip, err))
        raise error(f"{source} has {len(lines)} problem(s):\n" + "\n".join(lines)) from None


def _skipped(skip: Callable[[dict, ValidationError], bool], err: ValidationError, problem: dict) -> bool:
    return skip(problem, err)


def check_shared(field: str, uri: str | None, nodes: int) -> None:
    """Raise ValueError when `uri` is a local path but `nodes` (> 1) Ray nodes must all reach it.

    A path written on one node does not exist on another, so on a multi-node cluster checkpoints, batch outputs and
    anchor sets need an object store. (A local path on a shared mount would work, but cannot be told apart here.)
    """
    if uri is None or nodes <= 1 or uri.startswith("s3://"):
        return
    raise ValueError(f"{field}: {uri!r} is a local path, but this Ray cluster has {nodes} nodes and a path written on "
                     "one node does not exist on the others; use shared storage such as s3://bucket/prefix")

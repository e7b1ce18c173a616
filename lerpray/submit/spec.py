"""What `lerpray submit KIND CONFIG` sends to the Ray Jobs API: the entrypoint command and the runtime_env.

No Ray here: this module stages files and builds plain dicts; lerpray/submit/commands.py hands them to
`ray.job_submission.JobSubmissionClient`.

Every job runs the lerpray package, not a checkout: the entrypoint is `python -m lerpray <command> CONFIG`, and this
lerpray package is shipped as a `py_modules` entry unless told not to, so the cluster runs the client's lerpray
code whether or not the image has lerpray installed (its dependencies - torch, transformers, peft, ... - must be
in the image). What is uploaded as the job's `working_dir`:

- default: a fresh temporary folder holding only the config, as `lerpray-job/<config file name>`. Paths inside the
  config are read on the cluster, so they must be s3:// URIs or absolute paths every node can reach (shared
  storage); relative ones would point into the unpacked temp dir.
- `working_dir=DIR`: DIR is uploaded as is (Ray honours its .gitignore) and the config must lie inside it; relative
  paths in the config resolve inside the uploaded copy, which suits small local data files. Outputs of remote
  jobs should still go to s3://.
"""

from __future__ import annotations

import importlib
import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CONFIG_DIR",
    "JOB_COMMANDS",
    "JobSpec",
    "SubmitError",
    "build_job",
    "exit_code",
    "validate_config",
    "merge_runtime_env",
    "normalize_address",
    "parse_runtime_env_json",
]

# Job kind -> the `lerpray` subcommand it runs (each takes the config path as its first argument).
JOB_COMMANDS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "batch": ("batch",),
    "eval": ("eval", "sweep"),
}
# Job kind -> the loader that validates its config (pydantic models, no Ray), run before anything is uploaded.
CONFIG_LOADERS: dict[str, str] = {
    "train": "lerpray.train.config:load_train_config",
    "batch": "lerpray.batch.config:load_batch_config",
    "eval": "lerpray.eval.config:load_sweep_config",
}
CONFIG_DIR = "lerpray-job"  # where the config sits inside a staged working_dir
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the lerpray package, shipped as a py_module
# Keep byte-code caches out of uploads; Ray also honours .gitignore files.
DEFAULT_EXCLUDES = ("__pycache__", "*.pyc")


class SubmitError(ValueError):
    """A job cannot be submitted or inspected; the message says what to change."""


@dataclass(frozen=True)
class JobSpec:
    """Everything `JobSubmissionClient.submit_job` needs."""

    entrypoint: str  # shell command run in the job's working_dir on the cluster
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)


def build_job(
    kind: str,
    config: str | Path,
    *,
    staging_dir: Path,
    working_dir: str | Path | None = None,
    job_args: tuple[str, ...] = (),
    runtime_env: dict[str, Any] | None = None,
    ship_package: bool = True,
    validate: bool = True,
) -> JobSpec:
    """Stage the files of a `kind` job with `config` and build its entrypoint and runtime_env.

    Args:
        kind: "train", "batch" or "eval" (see JOB_ENTRYPOINTS).
        config: the job's YAML on this machine; it must parse to a mapping.
        staging_dir: an empty folder that lives until the job is submitted (the uploaded working_dir unless
            `working_dir` is given).
        working_dir: upload this folder instead of a staged one; it must contain `config`.
        job_args: extra arguments appended to the entrypoint command (e.g. ("--overwrite",)).
        runtime_env: the user's additions (pip, env_vars, ...), merged by `merge_runtime_env`.
        ship_package: add the lerpray package to py_modules (False: rely on lerpray installed on the cluster).
        validate: check the config with the job's own model first (`validate_config`), so a typo fails here.
    """
    if kind not in JOB_COMMANDS:
        raise SubmitError(f"unknown job kind {kind!r}; use one of {', '.join(JOB_COMMANDS)}")
    config = Path(config)
    _check_config(config)
    if validate:
        validate_config(kind, config)
    if working_dir is None:
        root, config_rel = _stage(staging_dir, config)
    else:
        root, config_rel = _inside(Path(working_dir), config)
    entrypoint = shlex.join(["python", "-m", "lerpray", *JOB_COMMANDS[kind], config_rel, *job_args])
    base: dict[str, Any] = {
        "working_dir": str(root),
        "excludes": list(DEFAULT_EXCLUDES),
        "env_vars": {"PYTHONUNBUFFERED": "1"},  # stream the driver's prints to `--follow` as they happen
    }
    if ship_package:
        base["py_modules"] = [str(PACKAGE_DIR)]
    metadata = {"lerpray_kind": kind, "lerpray_config": config.name}
    return JobSpec(entrypoint=entrypoint, runtime_env=merge_runtime_env(base, runtime_env or {}), metadata=metadata)


def _check_config(config: Path) -> None:
    if not config.is_file():
        raise SubmitError(f"config {config} does not exist (or is not a file)")
    try:
        raw = yaml.safe_load(config.read_text())
    except yaml.YAMLError as err:
        raise SubmitError(f"config {config} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SubmitError(f"config {config}: the top level must be a mapping of fields, got {type(raw).__name__}")


def validate_config(kind: str, config: Path) -> None:
    """Run the job's config loader on `config`; its ValueError lists every problem. Paths are not checked: they
    are read on the cluster."""
    module_name, _, attr = CONFIG_LOADERS[kind].partition(":")
    getattr(importlib.import_module(module_name), attr)(config)


def _stage(staging_dir: Path, config: Path) -> tuple[Path, str]:
    """Copy the config into `staging_dir`, the job's whole working_dir."""
    if any(staging_dir.iterdir()):
        raise SubmitError(f"staging folder {staging_dir} must be empty")
    (staging_dir / CONFIG_DIR).mkdir()
    shutil.copy2(config, staging_dir / CONFIG_DIR / config.name)
    return staging_dir, f"{CONFIG_DIR}/{config.name}"


def _inside(working_dir: Path, config: Path) -> tuple[Path, str]:
    """Check that an uploaded `working_dir` holds the config; the config's path inside it."""
    root = working_dir.resolve()
    if not root.is_dir():
        raise SubmitError(f"--working-dir {working_dir} is not a folder")
    try:
        config_rel = config.resolve().relative_to(root)
    except ValueError:
        raise SubmitError(
            f"config {config} is outside --working-dir {working_dir}: the job can only read files inside the "
            "uploaded folder; move the config there or leave --working-dir out"
        ) from None
    return root, config_rel.as_posix()


def merge_runtime_env(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with the user's `extra` runtime_env: env_vars merged (theirs win), py_modules and excludes appended,
    other fields (pip, uv, conda, container, config, ...) taken from `extra`."""
    if "working_dir" in extra:
        raise SubmitError("set the working directory with --working-dir, not in --runtime-env-json")
    merged = dict(base)
    for key, value in extra.items():
        if key == "env_vars":
            if not isinstance(value, dict):
                raise SubmitError("runtime_env.env_vars must be a mapping of names to strings")
            merged["env_vars"] = {**base.get("env_vars", {}), **{str(k): str(v) for k, v in value.items()}}
        elif key in ("py_modules", "excludes"):
            if not isinstance(value, list):
                raise SubmitError(f"runtime_env.{key} must be a list")
            merged[key] = [*base.get(key, []), *value]
        else:
            merged[key] = value
    return merged


def parse_runtime_env_json(text: str | None) -> dict[str, Any]:
    """The --runtime-env-json value as a dict (None or "" -> {})."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SubmitError(f"--runtime-env-json is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise SubmitError(f"--runtime-env-json must be a JSON object, got {type(value).__name__}")
    return value


def normalize_address(address: str | None) -> str:
    """The Jobs API URL: the head's dashboard, http(s)://HEAD:8265. A bare HOST:PORT gets http://."""
    if not address:
        raise SubmitError("no cluster address: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS")
    if "://" not in address:
        address = f"http://{address}"
    scheme = address.split("://", 1)[0]
    if scheme not in ("http", "https"):
        raise SubmitError(
            f"--address {address}: the Jobs API is the head's dashboard, http://HEAD:8265 "
            f"(not a {scheme}:// address or the GCS port)"
        )
    return address.rstrip("/")


def exit_code(status: str) -> int:
    """The exit status of `submit --follow` and `jobs logs --follow`: 0 SUCCEEDED, 1 FAILED or STOPPED."""
    return 0 if str(status) == "SUCCEEDED" else 1

"""Reading job configs: YAML file -> pydantic model, every problem listed with its field path (one shared recipe for
the train, batch and eval-sweep configs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["problem_lines", "read_yaml", "validate_config"]

Model = TypeVar("Model", bound=BaseModel)


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


def validate_config(model: type[Model], raw: Any, source: str, error: type[ValueError]) -> Model:
    """`model` validated from `raw`; `error` lists every problem with its field path."""
    if not isinstance(raw, dict):
        raise error(f"{source}: the top level must be a mapping of fields, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        lines = problem_lines(err)
        raise error(f"{source} has {len(lines)} problem(s):\n" + "\n".join(lines)) from None

"""Your own attribute poles: a YAML/JSON file naming each attribute's high and low pole and a text file for each
(`lerpray data corpora --config FILE`; docs/data.md has an example).

    attributes:
      politeness:
        high: {name: polite, path: polite.txt}     # .jsonl ({"text": ...} per line) or one text per line
        low: {name: rude, path: rude.jsonl}
        source: my annotations                     # optional, recorded in corpora.json
        licence: CC-BY-4.0
"""

from __future__ import annotations

from pathlib import Path

from lerpray.configs import StrictModel, read_yaml, validate_config
from lerpray.data.errors import CorpusError

__all__ = ["UserAttribute", "UserCorporaConfig", "UserPole", "load_user_config"]


class UserPole(StrictModel):
    name: str
    path: Path  # relative paths are taken relative to the config file


class UserAttribute(StrictModel):
    high: UserPole  # active at alpha = 1
    low: UserPole  # active at alpha = 0
    source: str = "user data"
    licence: str = "unknown"


class UserCorporaConfig(StrictModel):
    """Your own poles, e.g. `attributes: {politeness: {high: {name: polite, path: polite.txt}, low: {...}}}`."""

    attributes: dict[str, UserAttribute]


def load_user_config(path: str | Path) -> UserCorporaConfig:
    """Read a YAML/JSON pole config; relative file paths are taken relative to the config's folder.

    Raises:
        CorpusError: the file is unreadable or invalid (every problem, with its field path).
    """
    path = Path(path)
    config = validate_config(UserCorporaConfig, read_yaml(path, "corpora config", CorpusError), str(path), CorpusError)
    return UserCorporaConfig(attributes={
        name: attr.model_copy(update={"high": _rooted(attr.high, path.parent), "low": _rooted(attr.low, path.parent)})
        for name, attr in config.attributes.items()
    })  # fmt: skip


def _rooted(pole: UserPole, folder: Path) -> UserPole:
    return pole if pole.path.is_absolute() else pole.model_copy(update={"path": folder / pole.path})

"""Versioned anchor sets: immutable versions under one set root, and aliases (`latest`, operator names) on them.

    <set>/versions/<n>/lerpray-manifest.json    one complete anchor set per publish (manifest last, never rewritten)
    <set>/versions/<n>/<attribute.pole>/...
    <set>/aliases/<name>.json                   {"version": n, "set_at": ...}: written after version n is complete

A reference names a version: "<set>@<n>" or "<set>@<alias>"; a bare "<set>" means "@latest" when the set is
versioned. A folder with MANIFEST_NAME at its root is an unversioned set (the original layout) and loads unchanged;
`versions/<n>` of a versioned set is such a folder too, so a resolved version is an ordinary set URI.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from lerpray.anchors.errors import AnchorSetError, ObjectNotFound
from lerpray.anchors.format import MANIFEST_NAME, Manifest
from lerpray.anchors.keys import Store, check_key

__all__ = ["LATEST", "PrefixedStore", "VersionInfo", "alias_targets", "is_versioned", "list_versions",
           "next_version", "resolve_ref", "set_alias", "split_ref", "version_store"]

LATEST = "latest"
VERSIONS = "versions"
ALIASES = "aliases"
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PrefixedStore:
    """A view of `store` under `prefix`: keys are relative to it (one version of a set, for instance)."""

    def __init__(self, store: Store, prefix: str):
        self.store, self.prefix = store, check_key(prefix)

    @property
    def uri(self) -> str:
        return f"{self.store.uri.rstrip('/')}/{self.prefix}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if key else self.prefix

    def read_bytes(self, key: str) -> bytes:
        return self.store.read_bytes(self._key(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        self.store.write_bytes(self._key(key), data)

    def exists(self, key: str) -> bool:
        return self.store.exists(self._key(key))

    def list(self, prefix: str = "") -> list[str]:
        return [k[len(self.prefix) + 1:] for k in self.store.list(self._key(prefix)) if k != self.prefix]

    def delete_prefix(self, prefix: str) -> None:
        self.store.delete_prefix(self._key(prefix))


@dataclass(frozen=True)
class VersionInfo:
    """One published version: `complete` is False for a publish that never wrote its manifest."""

    version: int
    manifest: Manifest | None
    aliases: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return self.manifest is not None


def split_ref(uri: str) -> tuple[str, str | None]:
    """"s3://b/set@prod" -> ("s3://b/set", "prod"); a URI without "@<ref>" in its last segment -> (uri, None)."""
    head, sep, ref = uri.rpartition("@")
    if not sep or "/" in ref or not head or head.endswith(("/", ":")) or not _REF.match(ref):
        return uri, None
    return head, ref


def is_versioned(store: Store) -> bool:
    """A set root that holds versions (and no manifest of its own)."""
    return not store.exists(MANIFEST_NAME) and bool(store.list(ALIASES) or store.list(VERSIONS))


def version_store(store: Store, version: int) -> PrefixedStore:
    return PrefixedStore(store, f"{VERSIONS}/{version}")


def resolve_ref(store: Store, ref: str | None) -> tuple[PrefixedStore, int]:
    """The store of the version `ref` names ("3", "latest", an alias; None = latest), checked to be complete.

    Raises AnchorSetError naming the set, the reference and the versions/aliases that do exist.
    """
    ref = ref or LATEST
    if ref.isdigit():
        version = int(ref)
    else:
        try:
            version = _read_alias(store, ref)
        except ObjectNotFound:
            known = ", ".join(sorted(alias_targets(store))) or "none"
            raise AnchorSetError(f"anchor set {store.uri} has no alias {ref!r} (aliases: {known}); set it with "
                                 f"`lerpray anchors alias set {store.uri} {ref} VERSION` or name a version "
                                 f"({store.uri}@<n>)") from None
    target = version_store(store, version)
    if not target.exists(MANIFEST_NAME):
        done = [v.version for v in list_versions(store) if v.complete]
        via = "" if ref.isdigit() else f" (alias {ref!r})"
        raise AnchorSetError(f"anchor set {store.uri} has no complete version {version}{via}; complete versions: "
                             f"{done or 'none'}. Point the alias at one of them or publish again")
    return target, version


def next_version(store: Store) -> int:
    """One past the highest version number used so far (complete or not: a version number is never reused)."""
    return max(_version_numbers(store), default=0) + 1


def set_alias(store: Store, alias: str, version: int) -> None:
    """Point `alias` at `version` (which must be complete); one small object, written in one PUT."""
    if not _REF.match(alias) or alias.isdigit():
        raise AnchorSetError(f"alias {alias!r} must be letters, digits, '.', '_' or '-' (not only digits, which "
                             "name versions), at most 64 characters")
    if not version_store(store, version).exists(MANIFEST_NAME):
        raise AnchorSetError(f"anchor set {store.uri} has no complete version {version}; cannot point alias "
                             f"{alias!r} at it")
    body = {"version": version, "set_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    store.write_bytes(f"{ALIASES}/{alias}.json", (json.dumps(body) + "\n").encode())


def alias_targets(store: Store) -> dict[str, int]:
    """alias -> version, for every alias of the set."""
    out = {}
    for key in store.list(ALIASES):
        name = key.removeprefix(f"{ALIASES}/").removesuffix(".json")
        try:
            out[name] = _read_alias(store, name)
        except (ObjectNotFound, AnchorSetError):
            continue
    return out


def list_versions(store: Store) -> list[VersionInfo]:
    """Every version of the set, oldest first, with its manifest (None if its publish never completed)."""
    by_version: dict[int, list[str]] = {}
    for alias, version in alias_targets(store).items():
        by_version.setdefault(version, []).append(alias)
    out = []
    for version in sorted(_version_numbers(store)):
        target = version_store(store, version)
        try:
            manifest = Manifest.from_json(target.read_bytes(MANIFEST_NAME), target.uri)
        except ObjectNotFound:
            manifest = None
        out.append(VersionInfo(version, manifest, tuple(sorted(by_version.get(version, [])))))
    return out


def _version_numbers(store: Store) -> set[int]:
    parts = (key.split("/") for key in store.list(VERSIONS))
    return {int(p[1]) for p in parts if len(p) > 2 and p[1].isdigit()}


def _read_alias(store: Store, alias: str) -> int:
    data = store.read_bytes(f"{ALIASES}/{alias}.json")
    try:
        version = json.loads(data)["version"]
    except (ValueError, KeyError, TypeError) as err:
        raise AnchorSetError(f"alias {alias!r} of {store.uri} is unreadable ({err}); set it again") from err
    if not isinstance(version, int) or version < 1:
        raise AnchorSetError(f"alias {alias!r} of {store.uri} points at {version!r}, not a version number")
    return version

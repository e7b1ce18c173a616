"""Store keys: relative, "/"-separated paths under a store's root, checked before any store touches them; and the
`Store` interface every store (store.py, s3.py) and every reader of one (versions.py, load.py, ...) agree on."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from lerpray.anchors.errors import StoreError

__all__ = ["Store", "check_key"]


@runtime_checkable
class Store(Protocol):
    """A key -> bytes namespace under one root; `uri` names the root ("s3://bucket/prefix", "/abs/folder")."""

    @property
    def uri(self) -> str: ...

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete_prefix(self, prefix: str) -> None: ...


def check_key(key: str, *, allow_root: bool = False) -> str:
    """Return `key` if it is a safe relative key, else raise StoreError saying why.

    Args:
        key: "/"-separated relative path.
        allow_root: accept "" (the store root itself), for prefixes.
    """
    if allow_root and key == "":
        return key
    if not isinstance(key, str) or not key:
        raise StoreError(f"store key must be a non-empty string, got {key!r}")
    if "\\" in key or "\x00" in key:
        raise StoreError(f"store key {key!r} contains a backslash or NUL; use '/'-separated relative paths")
    if key.startswith("/"):
        raise StoreError(f"store key {key!r} is absolute; keys are relative to the store root")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise StoreError(f"store key {key!r} has an empty, '.' or '..' segment; keys cannot leave the store "
                             "root or be ambiguous")
    return key

"""Where anchor sets live: a `Store` is a flat key -> bytes namespace under one root (a local folder or an S3 prefix).

Keys are relative, "/"-separated paths ("sentiment.positive/adapter_config.json"), checked by keys.check_key.
Prefix operations (`list`, `delete_prefix`) work on whole path segments: prefix "a" covers "a" and "a/..." but not
"ab". `open_store(uri)` picks the store: LocalStore here, S3Store in s3.py.

This module and s3.py are lerpray's only cloud I/O.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from lerpray.anchors.errors import ObjectNotFound, StoreError
from lerpray.anchors.keys import Store, check_key
from lerpray.anchors.versions import resolve_ref, split_ref

_TMP_PREFIX = ".lerpray-tmp-"  # partial writes of LocalStore; never listed


class LocalStore:
    """A folder on the local filesystem. Writes are atomic (temp file + rename), so readers see whole files."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().absolute()

    @property
    def uri(self) -> str:
        return str(self.root)

    def _path(self, key: str, *, allow_root: bool = False) -> Path:
        check_key(key, allow_root=allow_root)
        path = self.root / key if key else self.root
        # Defence in depth against symlinks inside the root pointing out of it.
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise StoreError(f"store key {key!r} resolves outside the store root {self.root}")
        return path

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
            raise ObjectNotFound(f"{key!r} not found in {self.uri}") from err

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix, allow_root=True)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if not k.rsplit("/", 1)[-1].startswith(_TMP_PREFIX))

    def delete_prefix(self, prefix: str) -> None:
        """Delete the files under `prefix` (the whole root for ""), then the folders they leave empty."""
        for key in self.list(prefix):
            (self.root / key).unlink(missing_ok=True)
        base = self._path(prefix, allow_root=True)
        if base.is_dir():
            for folder in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir_if_empty(folder)
            if base != self.root:
                _rmdir_if_empty(base)


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (another writer's file, a temp file in flight): leave it


def open_store(
    uri: str | Path | Store,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
) -> Store:
    """Open "s3://bucket/prefix", "file:///abs/folder" or a local folder path; a Store is returned as is.

    A trailing "@<version or alias>" ("s3://bucket/sets/sentiment@latest") opens that version of a versioned set.

    Args:
        uri: where the anchor set lives.
        endpoint_url, region, profile: S3 only; default to the standard AWS environment (see S3Store).
    """
    if isinstance(uri, Store):
        return uri
    text = str(uri)
    root, ref = split_ref(text)
    if ref is not None:  # "<set>@<version or alias>": that version's folder (see versions.py)
        return resolve_ref(open_store(root, endpoint_url=endpoint_url, region=region, profile=profile), ref)[0]
    parsed = urlparse(text)
    if parsed.scheme and "@" in parsed.netloc:  # never echo it: the part before "@" may be a secret
        raise StoreError(f"store URI {parsed.scheme}://...@{parsed.hostname}{parsed.path} carries credentials "
                         "(user:password@); remove them and use AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY, or an instance/pod role")
    if parsed.scheme == "s3":
        from lerpray.anchors.s3 import S3Store

        return S3Store(parsed.netloc, parsed.path, endpoint_url=endpoint_url, region=region, profile=profile)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"file URI {text!r} names host {parsed.netloc!r}; use file:///absolute/path")
        return LocalStore(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive, i.e. a local path
        raise StoreError(f"unsupported store URI {text!r}: use s3://bucket/prefix, file:///path or a local folder")
    return LocalStore(text)

"""Reading and writing text data: the one reader of the texts that anchors train on, pole files, prompt files and
held-out text, local or on S3.

    read_texts(["data/polite.jsonl", "s3://bucket/poles/"])   -> ["...", ...]
    write_jsonl(path, texts)                                   one {"text": ...} per line, replaced atomically

JSONL (.jsonl, .json, .ndjson): one JSON object per line, the text in a string field ("text" unless told).
Any other file: one text per non-empty line, stripped. A folder (or an S3 prefix ending in "/") contributes its
.jsonl/.json/.ndjson/.txt/.text/.md files in name order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from lerpray.data.errors import DataError

__all__ = ["expand_paths", "read_texts", "write_jsonl"]

_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
_TEXT_SUFFIXES = (".txt", ".text", ".md")

Paths = str | Path | Sequence[str | Path]


def read_texts(
    paths: Paths,
    text_field: str = "text",
    fmt: str = "auto",
    s3_options: Mapping[str, str | None] | None = None,
    *,
    allow_empty: bool = False,
) -> list[str]:
    """The texts of files or folders (local or s3://), in order; blank texts are skipped.

    Args:
        paths: one path or several; folders and S3 prefixes ending in "/" are expanded (`expand_paths`).
        text_field: the JSONL field holding the text.
        fmt: "auto" (by extension), "jsonl" or "text" (one text per line).
        s3_options: endpoint_url / region / profile for lerpray.anchors.open_store.
        allow_empty: return [] when the files hold no text (e.g. an empty held-out split) instead of raising.

    Raises:
        DataError: a path that does not exist, a line that is not JSON or lacks the field, or no texts at all.
    """
    uris = _uris(paths)
    texts: list[str] = []
    for uri in expand_paths(uris, s3_options):
        is_json = fmt == "jsonl" or (fmt == "auto" and uri.endswith(_JSON_SUFFIXES))
        raw = _read_bytes(uri, s3_options).decode("utf-8")
        texts.extend(_parse_jsonl(raw, uri, text_field) if is_json else _parse_lines(raw))
    if not texts and not allow_empty:
        raise DataError(f"no texts found in {uris}; check the paths and the file contents")
    return texts


def expand_paths(paths: Paths, s3_options: Mapping[str, str | None] | None = None) -> list[str]:
    """The data files named by `paths` (folders and S3 prefixes expanded); DataError for a missing local path."""
    files: list[str] = []
    for uri in _uris(paths):
        if uri.startswith("s3://"):
            files.extend(_expand_s3(uri, s3_options))
        elif Path(uri).is_dir():
            files.extend(str(p) for p in sorted(Path(uri).iterdir()) if p.suffix in _JSON_SUFFIXES + _TEXT_SUFFIXES)
        elif Path(uri).is_file():
            files.append(uri)
        else:
            raise DataError(f"{uri!r} does not exist; fix the path")
    return files


def write_jsonl(path: Path, texts: Sequence[str]) -> None:
    """One {"text": ...} object per line; written to a temporary file first, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    tmp.replace(path)


def _uris(paths: Paths) -> list[str]:
    return [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]


def _expand_s3(uri: str, s3_options: Mapping[str, str | None] | None) -> list[str]:
    if not uri.endswith("/"):
        return [uri]
    from lerpray.anchors import open_store

    listed = open_store(uri, **(s3_options or {})).list("")
    keys = sorted(k for k in listed if k.endswith(_JSON_SUFFIXES + _TEXT_SUFFIXES))
    return [uri + k for k in keys]


def _read_bytes(uri: str, s3_options: Mapping[str, str | None] | None) -> bytes:
    if not uri.startswith("s3://"):
        try:
            return Path(uri).read_bytes()
        except OSError as err:
            raise DataError(f"cannot read {uri}: {err.strerror}") from err
    from lerpray.anchors import open_store

    parent, _, key = uri.rpartition("/")
    store = open_store(parent, **(s3_options or {}))
    if not store.exists(key):
        raise DataError(f"{uri} does not exist in the object store; fix the path")
    return store.read_bytes(key)


def _parse_jsonl(raw: str, uri: str, text_field: str) -> list[str]:
    texts = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{uri}:{lineno} is not valid JSON ({err.msg}); JSONL needs one object per line") from err
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise DataError(
                f"{uri}:{lineno} has no string field {text_field!r}; give every line one (or name the "
                "field that holds the text)"
            )
        if record[text_field].strip():
            texts.append(record[text_field])
    return texts


def _parse_lines(raw: str) -> list[str]:
    return [line.strip() for line in raw.splitlines() if line.strip()]

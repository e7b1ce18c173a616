"""Anchor training data: read texts (local or s3://, JSONL or plain text), tokenise, pack into fixed-size blocks,
and say which blocks each worker trains on at each step.

Everything is a pure function of (texts, tokenizer, block size, seed), so a resumed or restarted worker sees exactly
the batches it would have seen: `BlockSchedule.batch(step, micro)` needs no iterator state in checkpoints.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
_TEXT_SUFFIXES = (".txt", ".text", ".md")


class DataError(ValueError):
    """Training data is missing, empty or malformed; the message names the file and what to fix."""


def read_texts(
    paths: Sequence[str],
    text_field: str = "text",
    fmt: str = "auto",
    s3_options: Mapping[str, str | None] | None = None,
) -> list[str]:
    """Read training texts from files or folders (local or s3://).

    JSONL: one JSON object per line, the text in `text_field`. Text files: one example per non-empty line.
    Folders (and S3 prefixes ending in "/") contribute their .jsonl/.json/.ndjson/.txt/.text/.md files, sorted.
    `s3_options` (endpoint_url, region, profile) go to lerpray.anchors.open_store.
    """
    texts: list[str] = []
    for uri in expand_paths(paths, s3_options):
        is_json = fmt == "jsonl" or (fmt == "auto" and uri.endswith(_JSON_SUFFIXES))
        raw = _read_bytes(uri, s3_options).decode("utf-8")
        texts.extend(_parse_jsonl(raw, uri, text_field) if is_json else _parse_lines(raw))
    if not texts:
        raise DataError(f"no training texts found in {list(paths)}; check the paths and the file contents")
    return texts


def expand_paths(paths: Sequence[str], s3_options: Mapping[str, str | None] | None = None) -> list[str]:
    """The data files named by `paths` (folders and S3 prefixes expanded); DataError for a missing local path."""
    files: list[str] = []
    for uri in paths:
        if uri.startswith("s3://"):
            files.extend(_expand_s3(uri, s3_options))
        elif Path(uri).is_dir():
            files.extend(str(p) for p in sorted(Path(uri).iterdir()) if p.suffix in _JSON_SUFFIXES + _TEXT_SUFFIXES)
        elif Path(uri).is_file():
            files.append(uri)
        else:
            raise DataError(f"training data {uri!r} does not exist; fix anchors[].data.paths")
    return files


def _expand_s3(uri: str, s3_options: Mapping[str, str | None] | None) -> list[str]:
    if not uri.endswith("/"):
        return [uri]
    from lerpray.anchors import open_store

    listed = open_store(uri, **(s3_options or {})).list("")
    keys = sorted(k for k in listed if k.endswith(_JSON_SUFFIXES + _TEXT_SUFFIXES))
    return [uri + k for k in keys]


def _read_bytes(uri: str, s3_options: Mapping[str, str | None] | None) -> bytes:
    if not uri.startswith("s3://"):
        return Path(uri).read_bytes()
    from lerpray.anchors import open_store

    parent, _, key = uri.rpartition("/")
    store = open_store(parent, **(s3_options or {}))
    if not store.exists(key):
        raise DataError(f"training data {uri} does not exist in the object store; fix anchors[].data.paths")
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
            raise DataError(f"{uri}:{lineno} has no string field {text_field!r}; set anchors[].data.text_field")
        if record[text_field].strip():
            texts.append(record[text_field])
    return texts


def _parse_lines(raw: str) -> list[str]:
    return [line.strip() for line in raw.splitlines() if line.strip()]


def pack_blocks(texts: Sequence[str], tokenizer, block_size: int, seed: int) -> torch.Tensor:
    """Tokenise each text (+ EOS), shuffle the examples with `seed`, concatenate and cut into blocks.

    The tail shorter than a block is dropped. Returns token ids [N, block_size] (long).
    """
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)  # mixes neighbouring examples into one block the same way on every worker
    encoded = tokenizer([texts[i] for i in order], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [tok for ids in encoded for tok in (*ids, *eos)]
    num_blocks = len(stream) // block_size
    if num_blocks == 0:
        raise DataError(
            f"the data holds {len(stream)} tokens, fewer than one block of {block_size}; add data or lower "
            f"training.block_size"
        )
    return torch.tensor(stream[: num_blocks * block_size], dtype=torch.long).view(num_blocks, block_size)  # [N, T]


def steps_for_epochs(num_blocks: int, epochs: float, blocks_per_step: int) -> int:
    """Optimizer steps that cover `epochs` passes over `num_blocks` (at least one)."""
    return max(1, math.ceil(epochs * num_blocks / blocks_per_step))


class BlockSchedule:
    """Which blocks worker `rank` of `world_size` trains on at (step, micro-step).

    Sample g of the global stream is ((step * grad_accum + micro) * world_size + rank) * batch_size + j; it is block
    perm_e[g mod N] of epoch e = g div N, where perm_e is a permutation seeded by (seed, e).
    """

    def __init__(self, num_blocks: int, *, batch_size: int, grad_accum: int, rank: int, world_size: int, seed: int):
        self.num_blocks = num_blocks
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def blocks_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def indices(self, step: int, micro: int) -> list[int]:
        first = ((step * self.grad_accum + micro) * self.world_size + self.rank) * self.batch_size
        return [self._block(g) for g in range(first, first + self.batch_size)]

    def batch(self, blocks: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        return blocks[self.indices(step, micro)]  # [B, T]

    def _block(self, g: int) -> int:
        epoch, pos = divmod(g, self.num_blocks)
        if epoch not in self._perms:
            self._perms = {epoch: self._perm(epoch)}  # one epoch at a time: the stream moves forward
        return int(self._perms[epoch][pos])

    def _perm(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_blocks, generator=generator)  # [N]

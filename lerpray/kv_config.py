"""The KV-cache budget and context length as configs take them (Serve args, batch resources, CLI flags).

    kv_cache_bytes      the cache's bytes: an integer or a size such as "2GiB", "512 MiB", "1.5GB" (KiB/MiB/GiB/TiB
                        are powers of 1024, KB/MB/GB/TB of 1000); default: kv_cache_fraction on CUDA, 4 GiB on the CPU
    kv_cache_fraction   the share of the device memory free once the model is loaded, on CUDA only (default 0.8)
    context_length      the longest prompt + max_tokens wanted (default the model's max_position_embeddings); the
                        engine caps it at what the budget fits for its slots (lerpray/model/kv_budget.py)

No torch here: configs validate before any model loads.
"""

from __future__ import annotations

import argparse
import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, model_validator

__all__ = ["ByteSize", "KVCacheArgs", "add_kv_flags", "format_bytes", "kv_flags", "parse_bytes"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*(?P<number>\d+(\.\d+)?)\s*(?P<unit>[A-Za-z]*)\s*$")
_FORMS = 'an integer number of bytes or a size such as "2GiB", "512MiB" or "1.5GB"'


def parse_bytes(value: Any) -> int:
    """Bytes from an int or a size string ("2GiB" = 2 x 1024^3, "2GB" = 2 x 1000^3), rounded down; > 0.

    Raises ValueError saying which forms are taken.
    """
    if isinstance(value, bool):
        raise ValueError(f"must be {_FORMS}, got {value!r}")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, str) and (found := _SIZE.match(value)) and found["unit"].lower() in _UNITS:
        number = Decimal(found["number"]) * _UNITS[found["unit"].lower()]
    else:
        raise ValueError(f"must be {_FORMS} (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), got {value!r}")
    if int(number) < 1:
        raise ValueError(f"must be at least 1 byte, got {value!r}")
    return int(number)


def format_bytes(n: int) -> str:
    """`n` bytes in the largest binary unit that keeps it at least 1, e.g. "1.5 GiB"."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} B"


ByteSize = Annotated[int, BeforeValidator(parse_bytes)]


class KVCacheArgs(BaseModel):
    """The engine's KV-cache budget and wanted context: a mixin of ServeArgs and the batch job's resources."""

    kv_cache_bytes: ByteSize | None = Field(
        None, description='KV-cache bytes per engine: an integer or e.g. "2GiB", "512MiB"; unset = kv_cache_fraction '
        "of free memory on CUDA, 4 GiB on the CPU",
    )
    kv_cache_fraction: float | None = Field(
        None, gt=0, le=1, description="share of the CUDA memory free after the model loads (default 0.8); CUDA only",
    )
    context_length: int | None = Field(
        None, ge=1, description="longest prompt + max_tokens wanted; unset = the model's; capped by what the KV "
        "budget fits for max_batch_size slots",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> KVCacheArgs:
        if self.kv_cache_bytes is not None and self.kv_cache_fraction is not None:
            raise ValueError("kv_cache_bytes and kv_cache_fraction are both set; set one (bytes win over a fraction "
                             "of free memory, so the fraction would be ignored)")
        return self

    def check_kv_device(self, on_cuda: bool, device: str, max_tokens: tuple[str, int], prefix: str = "") -> None:
        """Raise ValueError when the fraction is set off CUDA (it would be ignored) or the context leaves no room
        for `max_tokens` (its field name, value); `prefix` is where these fields sit in the config."""
        if self.kv_cache_fraction is not None and not on_cuda:
            raise ValueError(f"{prefix}kv_cache_fraction is a share of free CUDA memory and does not apply on {device}; "
                             f'remove it or set {prefix}kv_cache_bytes (e.g. "2GiB") instead')
        name, tokens = max_tokens
        if self.context_length is not None and self.context_length <= tokens:
            raise ValueError(f"{prefix}context_length ({self.context_length}) leaves no room for a prompt with {name} "
                             f"({tokens}); raise {prefix}context_length above {tokens} or lower {name}")

    def kv_engine_kwargs(self) -> dict[str, Any]:
        """The fields that are set, as keyword arguments of lerpray.model.loading.load_engine."""
        fields = ("kv_cache_bytes", "kv_cache_fraction", "context_length")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


def add_kv_flags(parser: argparse.ArgumentParser, default: str, *, fraction: bool = True) -> None:
    """--kv-cache-bytes, --kv-cache-fraction (unless `fraction` is False: a CPU-only command) and --context-length,
    each defaulting to `default`."""
    parser.add_argument("--kv-cache-bytes", metavar="SIZE", help='KV-cache budget, e.g. 2GiB, 512MiB or bytes '
                        f"(default: {default}, else 0.8 of free GPU memory, 4 GiB on the CPU)")
    if fraction:
        parser.add_argument("--kv-cache-fraction", type=float, metavar="F",
                            help=f"KV-cache budget as a share of free GPU memory, cuda only (default: {default})")
    parser.add_argument("--context-length", type=int, metavar="TOKENS", help="longest prompt + max_tokens wanted, "
                        f"capped by what the budget fits (default: {default}, else the model's)")


def kv_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The KV flags that were given, by their config names."""
    given = {"kv_cache_bytes": args.kv_cache_bytes, "kv_cache_fraction": getattr(args, "kv_cache_fraction", None),
             "context_length": args.context_length}
    return {name: value for name, value in given.items() if value is not None}

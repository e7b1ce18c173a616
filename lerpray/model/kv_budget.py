"""How many tokens a KV-cache slot holds: a memory budget shared by the slots, capped by the context wanted.

    budget      `kv_cache_bytes` when given; on CUDA `kv_cache_fraction` (default 0.8) of the device memory free
                once the model is loaded (torch.cuda.mem_get_info, plus what torch's allocator holds unused); on the
                CPU DEFAULT_CPU_BYTES (4 GiB of address space: pages are committed as rows write them)
    per token   measured, not guessed: one forward writes one token into a one-token cache and its bytes are
                counted (every layer's keys and values, in the model's dtype and head layout)
    capacity    min(context wanted, budget // (per token x (slots + 1 scratch slot)))

The cache is then allocated once, at start-up: it never grows, and a request whose prompt plus max_tokens does not
fit a slot is refused (`KVCacheFullError`, a PromptTooLongError, so serving answers 400 context_length_exceeded).
"""

from __future__ import annotations

import torch

from lerpray.model.forward import ModelForward
from lerpray.model.kv_cache import SlotCache
from lerpray.model.requests import EngineError, PromptTooLongError

__all__ = ["DEFAULT_CPU_BYTES", "DEFAULT_GPU_FRACTION", "KVCacheFullError", "build_cache", "check_fits", "kv_budget"]

DEFAULT_CPU_BYTES = 4 * 2**30  # address space: CPU pages are committed as rows write them (kv_cache.py)
DEFAULT_GPU_FRACTION = 0.8
MIN_CAPACITY = 16


class KVCacheFullError(PromptTooLongError):
    """The prompt plus max_tokens fits the model's context but not a slot of the engine's KV-cache budget."""


def kv_budget(device: torch.device, kv_cache_bytes: int | None, fraction: float | None) -> int:
    """Bytes the KV cache may take on `device` (see the module docstring)."""
    if kv_cache_bytes is not None:
        if kv_cache_bytes <= 0:
            raise EngineError(f"kv_cache_bytes must be > 0, got {kv_cache_bytes}")
        return int(kv_cache_bytes)
    fraction = DEFAULT_GPU_FRACTION if fraction is None else fraction
    if not 0 < fraction <= 1:
        raise EngineError(f"kv_cache_fraction must be in (0, 1], got {fraction}")
    if device.type != "cuda":
        return DEFAULT_CPU_BYTES
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # held by torch, unused
    return int(fraction * (free + cached))


def bytes_per_token(forward: ModelForward, coeffs: torch.Tensor) -> int:
    """KV bytes one token takes in one slot: one forward into a cache of a single one-token (scratch) slot."""
    probe = SlotCache(forward.num_layers, 0, 1)
    forward.with_cache(probe).warm_up(coeffs)
    return probe.nbytes


def build_cache(forward: ModelForward, coeffs: torch.Tensor, num_slots: int, context_length: int, budget: int
                ) -> SlotCache:
    """The engine's cache, allocated now: `num_slots` slots of min(context_length, what the budget fits) tokens."""
    per_token = bytes_per_token(forward, coeffs)
    fits = budget // (per_token * (num_slots + 1))
    capacity = min(context_length, fits)
    if capacity < min(MIN_CAPACITY, context_length):
        raise EngineError(
            f"the KV cache budget of {budget / 2**20:.1f} MiB holds {fits} tokens per slot for {num_slots} slots "
            f"({per_token} bytes per token); raise kv_cache_bytes (or kv_cache_fraction) or lower max_batch_size"
        )
    cache = SlotCache(forward.num_layers, num_slots, capacity)
    forward.cache = cache
    forward.warm_up(coeffs)
    return cache


def check_fits(prompt_tokens: int, max_tokens: int, model_context: int, capacity: int, num_slots: int) -> None:
    """A prompt and its new tokens must fit one slot: the model's context (PromptTooLongError), then the KV-cache
    budget's capacity (KVCacheFullError)."""
    for limit, error, why in (
        (model_context, PromptTooLongError, f"context length {model_context}"),
        (capacity, KVCacheFullError,
         f"the engine's KV cache holds {capacity} tokens per slot ({num_slots} slots in its memory budget; a server "
         "with fewer slots or a larger kv_cache_bytes holds more)"),
    ):
        if prompt_tokens > limit - max_tokens:
            raise error(f"the prompt has {prompt_tokens} tokens but at most {limit - max_tokens} fit: {why} minus "
                        f"max_tokens {max_tokens}; shorten the prompt or lower max_tokens")

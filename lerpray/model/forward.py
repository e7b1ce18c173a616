"""The engine's one forward pass: the model over planned KV-cache slots, returning logits of rank 3.

Every path runs this same call: prefill, eager decode, the merged fast path, and the decode step that
`cuda_graphs.py` captures (or replays eagerly on the CPU). So its checks hold everywhere: every layer wrote through
the cache (full attention only), and the logits are [N, 1, V] when only each row's last query is kept, else [N, Q, V].

Only the last column is ever kept (an int `logits_to_keep=1`, the one form every transformers 5.x reads the same
way; a tensor is indexed differently between versions). The engine puts each row's last real token in the last
column (prefill chunks are left-padded, step_inputs.py), so no per-row gather is needed.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor

from lerpray.model.kv_cache import SlotCache
from lerpray.model.requests import EngineError
from lerpray.model.step_inputs import visibility_mask

__all__ = ["ModelForward"]


class ModelForward:
    """The model of an InterpolatedModel (or anything with `.model`, `.bind_coeffs`, `.merged`) over a SlotCache.

    The caller plans the cache (`SlotCache.plan`) before each call; holds no reference back to the engine.
    """

    def __init__(self, imodel, cache: SlotCache) -> None:
        self.imodel, self.model, self.cache = imodel, imodel.model, cache
        self.dtype = next(self.model.parameters()).dtype
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keeps_logits = "logits_to_keep" in params
        self.num_layers = int(self.model.config.num_hidden_layers)

    def with_cache(self, cache: SlotCache) -> ModelForward:
        return ModelForward(self.imodel, cache)

    def __call__(self, ids: Tensor, positions: Tensor, coeffs: Tensor, length: int, *, last_only: bool,
                 merged: Sequence[float] | None = None, host_coeffs: Tensor | None = None) -> Tensor:
        """ids, positions [N, Q] long; coeffs [N, K] (bound as is; `host_coeffs` the same on the host, read to find
        the active anchors without a device sync); `length` cache entries read per row.

        Returns logits [N, 1, V] (`last_only`: each row's last column) or [N, Q, V]. `merged` [K] (host values):
        every row runs on weights merged with that one mix instead.
        """
        self.imodel.bind_coeffs(coeffs, host_coeffs)
        kwargs = {"logits_to_keep": 1 if last_only else 0} if self._keeps_logits else {}
        with self.imodel.merged(merged) if merged is not None else nullcontext():
            out = self.model(
                input_ids=ids, position_ids=positions, attention_mask=visibility_mask(positions, length, self.dtype),
                use_cache=True, **{self._cache_kw: self.cache}, **kwargs,
            )
        if self.cache.updated != self.num_layers:
            raise EngineError(
                f"{type(self.model).__name__} wrote {self.cache.updated} of {self.num_layers} layers through the KV "
                "cache; the engine supports full-attention models only (no recurrent or hybrid layers)"
            )
        logits = out.logits
        if last_only and logits.dim() == 3 and logits.shape[1] != 1:  # a model without logits_to_keep
            logits = logits[:, -1:]
        expected = (ids.shape[0], 1 if last_only else ids.shape[1])
        if logits.dim() != 3 or tuple(logits.shape[:2]) != expected:
            raise EngineError(
                f"{type(self.model).__name__} returned logits of shape {list(logits.shape)}, expected "
                f"[{expected[0]}, {expected[1]}, vocab]; this transformers version treats logits_to_keep differently"
            )
        return logits

    @torch.inference_mode()
    def warm_up(self, coeffs: Tensor) -> None:
        """One padding token into the scratch slot: allocates the cache's storage and checks the model writes it."""
        scratch = torch.tensor([self.cache.scratch], device=coeffs.device)
        zero = torch.zeros(1, 1, dtype=torch.long, device=coeffs.device)
        self.cache.plan(scratch, zero, 1, first_slot=self.cache.scratch)
        self(zero, zero, coeffs[:1], 1, last_only=True)

"""A preallocated KV cache in slots: one slot per running request, written in place at each row's own positions.

Every layer holds keys and values [S, H, C, D] for S slots of capacity C. A forward pass runs a batch of rows; row n
lives in slot `slots[n]` and its query tokens sit at absolute positions `positions[n]`, so a token at position p is
stored at index p of its slot: no left padding, no concatenation per step, nothing to do on admission or finish (a
finished slot is simply reused; stale entries are never visible because the mask only shows index <= position).

Before each forward the engine calls `plan(...)`; each attention layer then calls `update(k, v, layer_idx)`, which
writes the new keys/values and returns the first `length` entries of the batch's slots (a view when the slots are
a contiguous range, as in decode). Capacity grows by doubling when a longer context arrives (a copy, at most
log2(max / initial) times), for every slot at once: memory follows the longest context seen, S x C tokens per layer
(pages would bound it by the tokens in use instead). Pure torch + the transformers Cache interface; no scheduling.
"""

from __future__ import annotations

from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

__all__ = ["SlotCache", "unsupported_attention"]


class _SlotLayer(CacheLayerMixin):
    """One attention layer's slots. Allocated on its first update, from the key shape the model produces."""

    is_sliding = False
    is_compileable = True

    def __init__(self, cache: SlotCache) -> None:
        super().__init__()
        self._cache = cache

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        shape = (self._cache.num_slots, key_states.shape[1], self._cache.capacity)  # [S, H, C]
        self.keys = key_states.new_zeros((*shape, key_states.shape[-1]))
        self.values = value_states.new_zeros((*shape, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """key_states, value_states [N, H, Q, D] -> keys, values [N, H, length, D] of the batch's slots."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self._cache.current
        # keys[slot, :, position] = k: advanced indices [N, Q] around the head slice give [N, Q, H, D].
        self.keys[plan.slot_index, :, plan.positions] = key_states.transpose(1, 2).to(self.keys.dtype)
        self.values[plan.slot_index, :, plan.positions] = value_states.transpose(1, 2).to(self.values.dtype)
        self._cache.updated += 1
        return plan.read(self.keys), plan.read(self.values)

    def grow(self, capacity: int) -> None:
        if self.is_initialized:
            self.keys = _grown(self.keys, capacity)
            self.values = _grown(self.values, capacity)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._cache.current.length, 0

    def get_seq_length(self) -> int:
        return self._cache.current.length if self._cache.current else 0

    def get_max_length(self) -> int:
        return self._cache.capacity


def _grown(x: Tensor, capacity: int) -> Tensor:
    bigger = x.new_zeros((*x.shape[:2], capacity, x.shape[-1]))
    bigger[:, :, : x.shape[2]] = x
    return bigger


class _Plan:
    """Where one forward's rows live: slots [N], positions [N, Q], and how many cache entries attention reads."""

    def __init__(self, slots: Tensor, positions: Tensor, length: int, first_slot: int | None) -> None:
        self.slot_index = slots[:, None].expand_as(positions)  # [N, Q]
        self.positions = positions  # [N, Q]
        self.slots = slots
        self.length = length
        self.first_slot = first_slot  # slots are first_slot .. first_slot + N - 1: read a view, copy nothing

    def read(self, x: Tensor) -> Tensor:
        if self.first_slot is not None:
            return x[self.first_slot : self.first_slot + self.slots.shape[0], :, : self.length]
        return x.index_select(0, self.slots)[:, :, : self.length]


class SlotCache(Cache):
    """KV cache of `num_slots` requests, each up to `capacity` tokens (grown on demand up to `max_capacity`).

    Args:
        num_layers: the model's attention layers.
        num_slots: the most requests held at once (the engine's max batch size).
        capacity: initial tokens per slot.
        max_capacity: the longest context a slot may need (prompt + new tokens + a prefill chunk's padding).
    """

    def __init__(self, num_layers: int, num_slots: int, capacity: int, max_capacity: int) -> None:
        self.num_slots, self.capacity, self.max_capacity = num_slots, min(capacity, max_capacity), max_capacity
        self.current: _Plan | None = None
        self.updated = 0  # layers written since the last plan: a model that skips the cache is caught by the engine
        super().__init__(layers=[_SlotLayer(self) for _ in range(num_layers)])

    def plan(self, slots: Tensor, positions: Tensor, length: int, first_slot: int | None = None) -> None:
        """Set where the next forward's rows live: slots [N] long, positions [N, Q] long, `length` entries read.

        `first_slot` says the slots are first_slot, first_slot + 1, ... (attention then reads a view, no gather);
        the caller knows it without a device sync. Every position must be < capacity (call `reserve` first).
        """
        self.current = _Plan(slots, positions, length, first_slot)
        self.updated = 0

    def reserve(self, needed: int) -> bool:
        """Make room for positions < `needed`; returns whether the storage moved (captured graphs go stale)."""
        if needed <= self.capacity:
            return False
        if needed > self.max_capacity:
            raise ValueError(f"a slot needs {needed} positions but holds at most {self.max_capacity}")
        self.capacity = min(self.max_capacity, max(needed, 2 * self.capacity))
        for layer in self.layers:
            layer.grow(self.capacity)
        return True

    def copy_prefix(self, source: int, targets: list[int], length: int) -> None:
        """Give slots `targets` the first `length` entries of slot `source` (n choices share one prefill)."""
        for layer in self.layers:
            if layer.is_initialized:
                for target in targets:
                    layer.keys[target, :, :length] = layer.keys[source, :, :length]
                    layer.values[target, :, :length] = layer.values[source, :, :length]

    @property
    def is_compileable(self) -> bool:
        return True

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.current.length if self.current else 0


def unsupported_attention(config) -> str | None:
    """Why the slot cache cannot hold this model (it keeps every position of every layer), or None if it can."""
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    sliding = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    if types == {"full_attention"} and not sliding:
        return None
    return (f"the engine needs full attention in every layer, but this {config.model_type} model has "
            f"{'a sliding window' if sliding else 'layer types ' + str(sorted(types))}; sliding-window and "
            "recurrent models are not supported")

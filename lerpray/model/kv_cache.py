"""A preallocated KV cache in slots: one slot per running request, written in place at each row's own positions.

Every layer holds keys and values [S + 1, H, C, D]: S slots of C tokens, plus one scratch slot (index S) that no
row owns, where padding queries write. A forward pass runs a batch of rows; row n reads slot `slots[n]`, and its
query tokens sit at absolute positions `positions[n]`, so a token at position p is stored at index p of its slot: no
left padding, no concatenation per step, nothing to do on admission or finish (a finished slot is simply reused;
stale entries are never visible because the mask only shows index <= position).

Before each forward the engine calls `plan(...)`; each attention layer then calls `update(k, v, layer_idx)`, which
writes the new keys/values at (write slot, position) and returns the first `length` entries of the batch's read
slots (a view when they are a contiguous range, as in decode). A padding query's write slot is the scratch slot,
so padding never touches a slot a row owns, whatever position it carries.

The capacity C is fixed when the cache is made (the engine sizes it from a memory budget, `kv_budget.py`) and the
storage is allocated by the first forward (the engine runs one at start-up): it never grows or moves, so captured
CUDA graphs stay valid. Pure torch + the transformers Cache interface; no scheduling. The layers share a small
state object with the cache (not the cache itself), so dropping the cache frees its storage at once.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

__all__ = ["SlotCache", "unsupported_attention"]


class _Plan:
    """Where one forward's rows live: read slots [N], write slots and positions [N, Q], entries attention reads."""

    def __init__(self, slots: Tensor, positions: Tensor, length: int, first_slot: int | None,
                 write_slots: Tensor | None) -> None:
        self.write_slots = (slots[:, None] if write_slots is None else write_slots).expand_as(positions)  # [N, Q]
        self.positions = positions  # [N, Q]
        self.slots = slots
        self.length = length
        self.first_slot = first_slot  # slots are first_slot .. first_slot + N - 1: read a view, copy nothing

    def read(self, x: Tensor) -> Tensor:
        if self.first_slot is not None:
            return x[self.first_slot : self.first_slot + self.slots.shape[0], :, : self.length]
        return x.index_select(0, self.slots)[:, :, : self.length]


class _State:
    """What the cache and its layers share: the capacity, the current plan and the layers written since it."""

    def __init__(self, num_slots: int, capacity: int) -> None:
        self.num_slots, self.capacity = num_slots, capacity
        self.current: _Plan | None = None
        self.updated = 0


class _SlotLayer(CacheLayerMixin):
    """One attention layer's slots. Allocated on its first update, from the key shape the model produces."""

    is_sliding = False
    is_compileable = True

    def __init__(self, state: _State) -> None:
        super().__init__()
        self._state = state

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        shape = (self._state.num_slots + 1, key_states.shape[1], self._state.capacity)  # [S + 1, H, C]
        self.keys = _zeros(key_states, (*shape, key_states.shape[-1]))
        self.values = _zeros(value_states, (*shape, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """key_states, value_states [N, H, Q, D] -> keys, values [N, H, length, D] of the batch's read slots."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self._state.current
        # keys[slot, :, position] = k: advanced indices [N, Q] around the head slice give [N, Q, H, D].
        self.keys[plan.write_slots, :, plan.positions] = key_states.transpose(1, 2).to(self.keys.dtype)
        self.values[plan.write_slots, :, plan.positions] = value_states.transpose(1, 2).to(self.values.dtype)
        self._state.updated += 1
        return plan.read(self.keys), plan.read(self.values)

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self._state.current.length, 0

    def get_seq_length(self) -> int:
        return self._state.current.length if self._state.current else 0

    def get_max_length(self) -> int:
        return self._state.capacity


def _zeros(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Zeros of `like`'s dtype and device. On the CPU from calloc (numpy), so pages are committed as positions are
    written: a large budget costs address space, not memory, until rows use it. On a GPU, torch's allocator."""
    if like.device.type != "cpu":
        return like.new_zeros(shape)
    nbytes = math.prod(shape) * like.element_size()
    return torch.from_numpy(np.zeros(nbytes, dtype=np.uint8)).view(like.dtype).view(shape)


class SlotCache(Cache):
    """KV cache of `num_slots` requests of up to `capacity` tokens each, plus the scratch slot `num_slots`.

    Args:
        num_layers: the model's attention layers.
        num_slots: the most requests held at once (the engine's max batch size).
        capacity: tokens per slot (fixed: the longest prompt + new tokens a slot may hold).
    """

    def __init__(self, num_layers: int, num_slots: int, capacity: int) -> None:
        self._state = _State(num_slots, capacity)
        super().__init__(layers=[_SlotLayer(self._state) for _ in range(num_layers)])

    @property
    def num_slots(self) -> int:
        return self._state.num_slots

    @property
    def scratch(self) -> int:
        """The slot no row owns: padding queries write here."""
        return self._state.num_slots

    @property
    def capacity(self) -> int:
        return self._state.capacity

    @property
    def updated(self) -> int:
        """Layers written since the last plan: a model that skips the cache is caught by the engine."""
        return self._state.updated

    @property
    def nbytes(self) -> int:
        """Bytes of keys and values allocated so far (every slot, the scratch slot included)."""
        return sum(t.numel() * t.element_size() for layer in self.layers if layer.is_initialized
                   for t in (layer.keys, layer.values))

    def plan(self, slots: Tensor, positions: Tensor, length: int, first_slot: int | None = None,
             write_slots: Tensor | None = None) -> None:
        """Set where the next forward's rows live: read slots [N] long, positions [N, Q] long, `length` entries read.

        `write_slots` [N, Q] (or [N, 1]) says where each query's keys/values go (default: its row's read slot; the
        scratch slot for padding queries). `first_slot` says the read slots are first_slot, first_slot + 1, ...
        (attention then reads a view, no gather); the caller knows it without a device sync. Every position must be
        < capacity and `length` <= capacity.
        """
        if length > self.capacity:
            raise ValueError(f"a forward reads {length} positions but a slot holds {self.capacity}")
        self._state.current = _Plan(slots, positions, length, first_slot, write_slots)
        self._state.updated = 0

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
        current = self._state.current
        return current.length if current else 0


def unsupported_attention(config) -> str | None:
    """Why the slot cache cannot hold this model (it keeps every position of every layer), or None if it can."""
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    sliding = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    if types == {"full_attention"} and not sliding:
        return None
    return (f"the engine needs full attention in every layer, but this {config.model_type} model has "
            f"{'a sliding window' if sliding else 'layer types ' + str(sorted(types))}; sliding-window and "
            "recurrent models are not supported")

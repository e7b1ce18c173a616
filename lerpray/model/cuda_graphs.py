"""The decode step replayed from CUDA graphs: one capture per batch-size bucket, never one per mix.

A decode step at batch 64 is a few hundred small kernels; launched from Python they cost more host time than the GPU
spends running them. Captured once, a step is one `graph.replay()`. Everything that changes between steps lives in
static device buffers the graph reads: token ids, positions (hence the mask), the KV cache's slots, and the
engine's [slots, K] coefficient buffer. A new mix is a copy into that buffer, so it never re-captures; only a new
batch bucket or a KV cache grown to a new capacity (which moves its storage) captures again, and `captures` counts
them for the benchmarks. Attention reads the whole capacity in a graph (a static shape), masked past each row's end.

Runs only on CUDA; the CPU engine runs the same cache and scheduler eagerly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lerpray.model.step_inputs import visibility_mask

if TYPE_CHECKING:
    from lerpray.model.engine import Engine
    from lerpray.model.kv_cache import SlotCache

__all__ = ["DecodeGraphs", "batch_buckets"]


def batch_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to max_batch_size (which is always a bucket): padding stays under 8 rows."""
    small = [b for b in (1, 2, 4) if b < max_batch_size]
    return small + list(range(8, max_batch_size, 8)) + [max_batch_size]


class DecodeGraphs:
    """Captured decode steps of one engine, keyed by (batch bucket, cache capacity)."""

    def __init__(self, engine: Engine, cache: SlotCache, coeffs: Tensor) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device; run the engine with cuda_graphs=False on the CPU")
        self.engine, self.cache, self.coeffs = engine, cache, coeffs
        slots, device = cache.num_slots, engine.device
        self.ids = torch.zeros(slots, 1, dtype=torch.long, device=device)  # [S, 1] static inputs
        self.positions = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.slots = torch.arange(slots, device=device)
        self.buckets = batch_buckets(slots)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.captures = 0
        self._pool = None
        self._capacity = cache.capacity

    def run(self, ids: list[int], positions: list[int], length: int) -> Tensor:
        """One decode step for rows [0, len(ids)); returns logits [len(ids), 1, V] (valid until the next run)."""
        rows = len(ids)
        bucket = next(b for b in self.buckets if b >= rows)
        pad = bucket - rows
        host = torch.tensor([[*ids, *[self.engine._pad_id] * pad], [*positions, *[0] * pad]], dtype=torch.long)
        self.ids[:bucket, 0].copy_(host[0], non_blocking=True)
        self.positions[:bucket, 0].copy_(host[1], non_blocking=True)
        if self.cache.capacity != self._capacity:  # the cache grew: its storage moved under every graph
            self.graphs.clear()
            self._capacity = self.cache.capacity
        key = (bucket, self.cache.capacity)
        if key not in self.graphs:
            self.graphs[key] = self._capture(bucket)
        graph, logits = self.graphs[key]
        graph.replay()
        return logits[:rows]

    def _step(self, bucket: int) -> Tensor:
        """The captured work: mask from the static positions, then the model over slots [0, bucket)."""
        engine, capacity = self.engine, self.cache.capacity
        positions = self.positions[:bucket]
        self.cache.plan(self.slots[:bucket], positions, capacity, first_slot=0)
        engine.imodel.bind_coeffs(self.coeffs[:bucket])
        out = engine.model(
            input_ids=self.ids[:bucket], position_ids=positions,
            attention_mask=visibility_mask(positions, capacity, engine._dtype),
            use_cache=True, **{engine._cache_kw: self.cache}, **({"logits_to_keep": 1} if engine._keeps_logits else {}),
        )
        return out.logits

    def _capture(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy inits and cuBLAS workspaces happen outside the capture
            self._step(bucket)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._step(bucket)
        self._pool = graph.pool()
        self.captures += 1
        return graph, logits

"""The decode step over a whole batch bucket, as a pure function of static buffers: captured as CUDA graphs, or
run eagerly ("bucket" replay, what the CPU suite exercises).

A decode step at batch 64 is a few hundred small kernels; launched from Python they cost more host time than the GPU
spends running them. Captured once, a step is one `graph.replay()`. Everything that changes between steps lives in
static buffers the captured function reads, for every row of the bucket, padding rows included: token ids,
positions (hence the mask), write slots (a padding row writes to the cache's scratch slot, so it never touches a
slot that a row mid-prefill owns) and the engine's [slots, K] coefficient rows (mix_state.MixTable). A new mix is a copy
into those rows, so it never re-captures. Attention reads a static number of entries per graph: one graph per (batch
bucket, length bucket), all captured at start-up (`captures` counts them; the KV cache never moves, so none goes
stale).

Cost by active anchors under graphs: a graph cannot look at the coefficients to skip unused anchors, so with
`active_capacity` the model's LoRA layers are pinned to static buffers for that many active anchors
(InterpolatedModel.pin_active, mix_state.py) and every bucket is captured twice: over the pinned buffers, and over
every anchor's columns. `run` refills the pinned buffers from the host's coefficient rows before a replay
(`prepare_active`, no device sync; a no-op while the active anchors stay the same) and replays the pinned graph, or,
when the rows use more anchors than the capacity, the wide one (`wide_steps` counts those): never slower than
graphs without pinning, and a step over few anchors pays for `active_capacity` of them, not for all.

`step(bucket, length)` is the function; `run` fills the buffers and either replays its graph or calls it eagerly.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from lerpray.model.forward import ModelForward
from lerpray.model.mix_state import MixTable
from lerpray.model.requests import EngineError

__all__ = ["DECODE_MODES", "DecodeGraphs", "batch_buckets", "choose_decode_mode", "length_buckets"]

DECODE_MODES = ("graph", "bucket", "eager")


def choose_decode_mode(decode_mode: str | None, cuda_graphs: bool | None, device: torch.device) -> str:
    """`decode_mode`, else the older `cuda_graphs` switch, else graphs on CUDA and eager rows elsewhere."""
    on_gpu = device.type == "cuda"
    if decode_mode is None:
        decode_mode = "graph" if (on_gpu if cuda_graphs is None else cuda_graphs) else "eager"
    if decode_mode not in DECODE_MODES or (decode_mode == "graph" and not on_gpu):
        raise EngineError(f"decode_mode must be one of {DECODE_MODES} ('graph' needs a CUDA device; 'bucket' runs "
                          f"its function eagerly), got {decode_mode!r} on {device}")
    return decode_mode


def batch_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to max_batch_size (which is always a bucket): padding stays under 8 rows."""
    small = [b for b in (1, 2, 4) if b < max_batch_size]
    return small + list(range(8, max_batch_size, 8)) + [max_batch_size]


def length_buckets(capacity: int, smallest: int = 256) -> list[int]:
    """Cache entries a graph's attention reads: 256, 512, 1024, ... below `capacity`, then `capacity`."""
    lengths, length = [], smallest
    while length < capacity:
        lengths.append(length)
        length *= 2
    return [*lengths, capacity]


class DecodeGraphs:
    """The decode steps of one engine over slots [0, bucket). `capture`: CUDA graphs of every (batch bucket,
    length bucket), captured now; otherwise `run` calls the same `step` eagerly (the CPU's replay mode).
    `active_capacity`: pin the model to that many active anchors per step (None: every anchor's columns).

    Holds the forward pass and the coefficient rows, never the engine (no reference cycle).
    """

    def __init__(self, forward: ModelForward, mixes: MixTable, pad_id: int, *, capture: bool,
                 active_capacity: int | None = None) -> None:
        if capture and not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device; on the CPU use decode_mode='bucket' (the same function, "
                               "run eagerly)")
        self.forward, self.mixes, self.pad_id = forward, mixes, pad_id
        self.coeffs = mixes.device_rows  # [S, K], the static input every graph reads
        self.pinned = active_capacity is not None
        if self.pinned:
            forward.imodel.pin_active(active_capacity)
        self.wide_steps = 0  # steps whose rows used more anchors than the pinned capacity
        cache, device = forward.cache, self.coeffs.device
        slots, self.scratch = cache.num_slots, cache.scratch
        self._static = torch.zeros(3, slots, 1, dtype=torch.long, device=device)  # ids, positions, write slots
        self.ids, self.positions, self.write_slots = self._static
        self.write_slots.fill_(self.scratch)
        self.read_slots = torch.arange(slots, device=device)
        self._host = self._static.cpu()  # staging for one copy per step: pinned on CUDA
        self._host = self._host.pin_memory() if device.type == "cuda" else self._host
        self.buckets, self.lengths = batch_buckets(slots), length_buckets(cache.capacity)
        self.graphs: dict[tuple[int, int, bool], tuple[torch.cuda.CUDAGraph, Tensor]] = {}  # (.., pinned)
        self.captures = 0
        self._pool = None
        if capture:
            for bucket in self.buckets:
                for length in self.lengths:
                    for pinned in ((True, False) if self.pinned else (False,)):
                        self.graphs[bucket, length, pinned] = self._capture(bucket, length, pinned)

    def bucket(self, rows: int) -> int:
        return next(b for b in self.buckets if b >= rows)

    def run(self, ids: list[int], positions: list[int], write_slots: list[int], needed: int) -> Tensor:
        """One decode step for slots [0, bucket): the three lists fill the whole bucket (step_inputs.decode_inputs);
        `needed` entries must be visible. Returns logits [bucket, 1, V] (a graph's: valid until the next run)."""
        bucket = len(ids)
        if bucket not in self.buckets:
            raise ValueError(f"a decode step must fill a whole bucket {self.buckets}, got {bucket} rows")
        length = next(n for n in self.lengths if n >= needed)
        self._host[:, :bucket, 0] = torch.tensor([ids, positions, write_slots], dtype=torch.long)
        self._static.copy_(self._host, non_blocking=True)  # one contiguous copy; rows past the bucket go unread
        self.mixes.upload()
        pinned = self.pinned and self.forward.imodel.prepare_active(self.mixes.host[:bucket])
        self.wide_steps += self.pinned and not pinned
        if not self.graphs:
            with self._columns(pinned):
                return self.step(bucket, length)
        graph, logits = self.graphs[bucket, length, pinned]
        graph.replay()
        return logits

    def _columns(self, pinned: bool):
        """What a capture of a pinned model reads: the pinned buffers, or (the wide graphs) every column."""
        return self.forward.imodel.static_active(pinned) if self.pinned else nullcontext()

    def step(self, bucket: int, length: int) -> Tensor:
        """The captured function: the model over slots [0, bucket) from the static buffers alone."""
        positions = self.positions[:bucket]
        self.forward.cache.plan(self.read_slots[:bucket], positions, length, first_slot=0,
                                write_slots=self.write_slots[:bucket])
        return self.forward(self.ids[:bucket], positions, self.coeffs[:bucket], length, last_only=True)

    def _capture(self, bucket: int, length: int, pinned: bool) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        """Capture with padding inputs in the buffers: the warm-up's and capture's writes go to the scratch slot."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self._columns(pinned):  # warm-up: lazy inits, cuBLAS workspaces
            self.step(bucket, length)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), self._columns(pinned):
            logits = self.step(bucket, length)
        self._pool = graph.pool()
        self.captures += 1
        return graph, logits

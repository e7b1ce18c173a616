"""The coefficients of the next forward passes: the engine's rows of them (`MixTable`), and the anchors those
passes pay for (`MixState`, shared by an InterpolatedModel's layers).

A layer's LoRA work is two matmuls over its stacked rank columns. An anchor whose coefficient is zero in every row
of a forward adds exactly nothing (lerpray.lora_math: cost by active anchors), so at the start of each forward
`MixState` finds the anchors the rows use (`active_anchors`) and points every layer and shrink group at their
columns only (`gather_anchors`), gathered once per active set and kept in a small LRU: a decode stream whose rows
keep their mixes gathers once, then runs two matmuls over only those columns per layer and step. All anchors
active: the layers read their own buffers (no copy). No anchor active: the layers skip the LoRA matmuls.

While a CUDA graph is being captured the coefficients cannot be read on the host, so the captured function runs
over all anchors' columns (correct for any coefficients it later reads from its static buffer), unless the model
was pinned (`pin(capacity)`): then it runs over static buffers sized for `capacity` active anchors per layer (the
`capacity` largest ranks), zero-padded, which `prepare(coeffs)` refills in place before each replay with the
active anchors' columns, owners and scales (the captured column weights read those too). A step whose rows use
more anchors than the capacity is refused by `prepare` (the engine replays a graph over every anchor's columns).

Layers and groups are duck-typed (interpolated.py and lora_groups.py build them; this file imports neither):
a layer has `stacked` (its full StackedLora), `group` and the attributes `active`, `pattern`; a group has
`members`, `stacked` and `use(active)`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lerpray.lora_math import StackedLora, active_anchors, column_weights, gather_anchors

__all__ = ["STATIC", "CoeffsNotSetError", "MixState", "MixTable", "column_pattern"]

STATIC = "static"  # MixState.anchors while the layers read the pinned buffers


class MixTable:
    """The engine's coefficient rows, one mix per KV-cache slot ([slots, K]): written on the host, uploaded once.

    Mixes change on the host (a request joins, a schedule moves on, a steer hook answers, a slot is freed), so the
    rows live in host memory and go to the device in one copy before a forward that follows a change (`upload`),
    not one small copy per row. The device rows are a fixed buffer: a captured CUDA graph reads them as a static
    input. Host reads (which anchors a step uses) read `host`: no device sync. On CUDA the host rows are pinned and
    the upload asynchronous; a write first waits for the last upload's event (long done in practice: the engine
    syncs on its sampled ids every decode step), so the host never rewrites rows a copy in flight still reads. On the
    CPU host and device rows are one tensor.
    """

    def __init__(self, slots: int, anchors: int, device: torch.device) -> None:
        on_gpu = device.type == "cuda"
        self.host = torch.zeros(slots, anchors, pin_memory=on_gpu)  # [S, K] float32
        self.device_rows = torch.zeros(slots, anchors, device=device) if on_gpu else self.host  # [S, K]
        self._stale = False  # host rows changed since the last upload
        self._uploaded: torch.cuda.Event | None = None  # recorded after the last asynchronous upload

    def write(self, slot: int, coeffs: Sequence[float]) -> None:
        self._settle()
        self.host[slot] = torch.tensor(coeffs, dtype=torch.float32)
        self._stale = True

    def clear(self, slots: list[int]) -> None:
        """Zero freed slots' rows (a stale mix would keep its anchors active) and empty the list."""
        if slots:
            self._settle()
            self.host[slots] = 0.0
            slots.clear()
            self._stale = True

    def upload(self) -> Tensor:
        """The device rows [S, K], brought up to date with the host's."""
        if self._stale and self.device_rows is not self.host:
            self.device_rows.copy_(self.host, non_blocking=True)
            self._uploaded = torch.cuda.Event()
            self._uploaded.record()
        self._stale = False
        return self.device_rows

    def _settle(self) -> None:
        """Wait until the last upload has read the host rows (they are about to change)."""
        if self._uploaded is not None:
            self._uploaded.synchronize()
            self._uploaded = None


def _columns_for(stacked: StackedLora, capacity: int) -> int:
    """Rank columns that any `capacity` of the layer's anchors can need: the sum of its `capacity` largest ranks."""
    ranks = torch.bincount(stacked.owner.cpu(), minlength=stacked.num_anchors)
    return int(ranks.sort(descending=True).values[:capacity].sum())


class CoeffsNotSetError(ValueError):
    """A forward pass ran before any coefficients were set."""


def column_pattern(stacked: StackedLora) -> tuple:
    """Layers with equal owners, scales and dtype have equal per-column weights: the key that shares them."""
    return tuple(stacked.owner.tolist()), tuple(stacked.col_scale.tolist()), stacked.A_cat.dtype


class MixState:
    """Shared by all layers of one InterpolatedModel: the coefficients of the next forward passes.

    Most layers stack the same anchors with the same ranks and scales, so their per-column weights C_r are equal:
    they are computed once per forward and pattern (not once per layer), which keeps the per-layer hot path to
    three kernels. They are recomputed at the start of every forward from `coeffs`, so a caller may update the
    coefficient tensor in place between forwards (a captured CUDA graph reads it as a static input).

    Args:
        gather: pay per forward only for the anchors its rows use (False: every layer always runs all anchors).
        cache_size: active sets whose gathered factors are kept (LRU).
    """

    def __init__(self, *, gather: bool = True, cache_size: int = 4) -> None:
        self.coeffs: Tensor | None = None  # [N, K] float32
        self.host: Tensor | None = None  # [N, K] the same on the host, when the caller has it
        self.gather, self.cache_size = gather, cache_size
        self.layers: list[nn.Module] = []
        self.groups: list = []
        self.anchors: tuple[int, ...] | None = None  # the active anchors the layers point at; None: all of them
        self._columns: dict[tuple, Tensor] = {}  # layer or group pattern -> C_r [N, R] in the layers' dtype
        self._layouts: OrderedDict[tuple, list[tuple[StackedLora, tuple]]] = OrderedDict()
        self.capacity = 0  # active anchors the pinned buffers hold (0: not pinned)
        self.static_forwards = False  # run forwards as a captured graph does (no host read; CPU tests)
        self.static_pinned = True  # static forwards of a pinned model read the pinned buffers, else every column
        self._pinned: list[tuple[StackedLora, tuple]] = []  # like a _layout entry, at static shapes
        self._pinned_anchors: tuple[int, ...] | None = None

    def attach(self, layers: Sequence[nn.Module], groups: Sequence) -> None:
        self.layers, self.groups = list(layers), list(groups)

    def set(self, coeffs: Tensor, host: Tensor | None = None) -> None:
        """coeffs [N, K] on the layers' device; `host`: the same values in host memory, read instead of coeffs to
        find the active anchors (no device sync)."""
        self.coeffs, self.host = coeffs, host
        self._columns.clear()

    def invalidate(self) -> None:
        """The layers' factors were rewritten in place (an anchor set paged in: anchor_pool.py): drop every copy of
        them (gathered layouts, the pinned buffers' contents), so the next forward gathers and `prepare` refills."""
        self._layouts.clear()
        self._columns.clear()
        self._pinned_anchors = None
        if isinstance(self.anchors, tuple):  # the layers hold a gathered copy: their own buffers until re-gathered
            self.use(None)

    def new_forward(self, *_) -> None:
        self._columns.clear()
        if not self.gather or self.coeffs is None or not self.layers:
            return
        static = self.static_forwards or (self.coeffs.is_cuda and torch.cuda.is_current_stream_capturing())
        if static:
            anchors = STATIC if self.capacity and self.static_pinned else None
        else:
            anchors = tuple(active_anchors(self.host if self.host is not None else self.coeffs))
            if len(anchors) == self.coeffs.shape[1]:
                anchors = None  # every anchor is used: the layers' own buffers, no gathered copy
        if anchors != self.anchors:
            self.use(anchors)

    def use(self, anchors: tuple[int, ...] | str | None) -> None:
        """Point every layer and group at the columns of `anchors` (None: all anchors, the layers' own buffers;
        STATIC: the pinned buffers)."""
        self.anchors = anchors
        self._columns.clear()
        if anchors is None:
            for layer in self.layers:
                layer.active, layer.pattern = None, layer.full_pattern
            for group in self.groups:
                group.use(None)
            return
        layout = self._pinned if anchors == STATIC else self._layout(anchors)
        for layer, (stacked, pattern) in zip(self.layers, layout[: len(self.layers)], strict=True):
            layer.active, layer.pattern = stacked, pattern
        for group, (stacked, pattern) in zip(self.groups, layout[len(self.layers) :], strict=True):
            group.use((stacked, pattern))

    def pin(self, capacity: int) -> None:
        """Allocate the static buffers for up to `capacity` active anchors (see the module docstring), on the
        layers' current device and dtype: pin after moving the model, not before."""
        if capacity < 1:
            raise ValueError(f"the pinned capacity must be at least 1 anchor, got {capacity}")
        self._pinned = self._build(None, capacity)
        self.capacity, self._pinned_anchors = capacity, ()
        if self.anchors == STATIC:
            self.use(STATIC)

    def prepare(self, coeffs: Tensor) -> bool:
        """Refill the pinned buffers, in place, with the columns of the anchors coeffs [N, K] uses. Reads coeffs on
        the host: call it outside a graph. False when they are more than the capacity (or nothing is pinned)."""
        anchors = tuple(active_anchors(coeffs))
        if not self.capacity or len(anchors) > self.capacity:
            return False
        if anchors != self._pinned_anchors:
            for layer, (pinned, _) in zip(self.layers, self._pinned, strict=False):
                part = gather_anchors(layer.stacked, anchors, capacity=pinned.A_cat.shape[0])
                for dst, src in zip((pinned.A_cat, pinned.B_cat, pinned.owner, pinned.col_scale),
                                    (part.A_cat, part.B_cat, part.owner, part.col_scale), strict=True):
                    dst.copy_(src)  # a grouped member's A is a view of its group's: that is refilled too
            pinned_of = {id(layer): p for layer, (p, _) in zip(self.layers, self._pinned, strict=False)}
            for group, (pinned, _) in zip(self.groups, self._pinned[len(self.layers) :], strict=True):
                pinned.owner.copy_(torch.cat([pinned_of[id(m)].owner for m in group.members]))
                pinned.col_scale.copy_(torch.cat([pinned_of[id(m)].col_scale for m in group.members]))
            self._pinned_anchors = anchors
        return True

    def _layout(self, anchors: tuple[int, ...]) -> list[tuple[StackedLora, tuple]]:
        """Every layer's gathered factors, then every group's (its members' gathered A, concatenated)."""
        lead = self.layers[0].A_cat
        key = (anchors, lead.device, lead.dtype)  # a model moved to another device or dtype gathers anew
        if key in self._layouts:
            self._layouts.move_to_end(key)
            return self._layouts[key]
        layout = self._build(anchors, None)
        if self.cache_size > 0:
            self._layouts[key] = layout
            while len(self._layouts) > self.cache_size:
                self._layouts.popitem(last=False)
        return layout

    def _build(self, anchors: tuple[int, ...] | None, capacity: int | None) -> list[tuple[StackedLora, tuple]]:
        """Gathered factors of `anchors`, or (anchors None) zero buffers sized for `capacity` anchors per layer."""
        if anchors is None:
            layers = [gather_anchors(layer.stacked, [], capacity=_columns_for(layer.stacked, capacity))
                      for layer in self.layers]
        else:
            layers = [gather_anchors(layer.stacked, anchors) for layer in self.layers]
        by_layer = {id(layer): stacked for layer, stacked in zip(self.layers, layers, strict=True)}
        groups = []
        for group in self.groups:
            parts = [by_layer[id(m)] for m in group.members]
            A = torch.cat([p.A_cat for p in parts])  # [R_g', d_in]
            start = 0
            for member, part in zip(group.members, parts, strict=True):  # members read views of the group's A
                rank = part.A_cat.shape[0]
                by_layer[id(member)] = part = StackedLora(A[start : start + rank], part.B_cat, part.owner,
                                                          part.col_scale, part.num_anchors)
                start += rank
            owner, scale = torch.cat([p.owner for p in parts]), torch.cat([p.col_scale for p in parts])
            groups.append(StackedLora(A, A.new_empty(0), owner, scale, group.stacked.num_anchors))
        if anchors is None:  # static buffers: layers with equal full patterns hold equal columns for any anchors
            return ([(by_layer[id(layer)], (STATIC, layer.full_pattern)) for layer in self.layers]
                    + [(stacked, (STATIC, group.full_pattern)) for stacked, group in zip(groups, self.groups,
                                                                                         strict=True)])
        layout = [(by_layer[id(layer)], column_pattern(by_layer[id(layer)])) for layer in self.layers]
        return layout + [(stacked, column_pattern(stacked)) for stacked in groups]

    def rows(self) -> int:
        """Rows of the coefficients set (each forward's batch must have as many)."""
        if self.coeffs is None:
            raise CoeffsNotSetError("no coefficients set: call set_coeffs(coeffs [N, K]) or use merged(coeffs [K])")
        return self.coeffs.shape[0]

    def columns(self, owner) -> Tensor:
        """C_r [N, R] of a layer or group (its active columns), computed once per forward and pattern."""
        if self.coeffs is None:
            raise CoeffsNotSetError("no coefficients set: call set_coeffs(coeffs [N, K]) or use merged(coeffs [K])")
        col = self._columns.get(owner.pattern)
        if col is None:
            stacked = owner.factors()
            col = self._columns[owner.pattern] = column_weights(self.coeffs, stacked).to(stacked.A_cat.dtype)
        return col

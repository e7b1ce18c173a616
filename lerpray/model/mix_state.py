"""The coefficients of an InterpolatedModel's next forward passes, and the anchors those passes pay for.

A layer's LoRA work is two matmuls over its stacked rank columns. An anchor whose coefficient is zero in every row
of a forward adds exactly nothing (lerpray.lora_math: cost by active anchors), so at the start of each forward
`MixState` finds the anchors the rows use (`active_anchors`) and points every layer and shrink group at their
columns only (`gather_anchors`), gathered once per active set and kept in a small LRU: a decode stream whose rows
keep their mixes gathers once, then runs two matmuls over only those columns per layer and step. All anchors
active: the layers read their own buffers (no copy). No anchor active: the layers skip the LoRA matmuls.

While a CUDA graph is being captured the coefficients cannot be read on the host, so the captured function runs
over all anchors' columns (correct for any coefficients it later reads from its static buffer).

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

__all__ = ["CoeffsNotSetError", "MixState", "column_pattern"]


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
        self.gather, self.cache_size = gather, cache_size
        self.layers: list[nn.Module] = []
        self.groups: list = []
        self.anchors: tuple[int, ...] | None = None  # the active anchors the layers point at; None: all of them
        self._columns: dict[tuple, Tensor] = {}  # layer or group pattern -> C_r [N, R] in the layers' dtype
        self._layouts: OrderedDict[tuple, list[tuple[StackedLora, tuple]]] = OrderedDict()

    def attach(self, layers: Sequence[nn.Module], groups: Sequence) -> None:
        self.layers, self.groups = list(layers), list(groups)

    def set(self, coeffs: Tensor) -> None:
        self.coeffs = coeffs
        self._columns.clear()

    def new_forward(self, *_) -> None:
        self._columns.clear()
        if not self.gather or self.coeffs is None or not self.layers:
            return
        capturing = self.coeffs.is_cuda and torch.cuda.is_current_stream_capturing()
        anchors = None if capturing else tuple(active_anchors(self.coeffs))
        if anchors is not None and len(anchors) == self.coeffs.shape[1]:
            anchors = None  # every anchor is used: the layers' own buffers, no gathered copy
        if anchors != self.anchors:
            self.use(anchors)

    def use(self, anchors: tuple[int, ...] | None) -> None:
        """Point every layer and group at the columns of `anchors` (None: all anchors, the layers' own buffers)."""
        self.anchors = anchors
        self._columns.clear()
        if anchors is None:
            for layer in self.layers:
                layer.active, layer.pattern = None, layer.full_pattern
            for group in self.groups:
                group.use(None)
            return
        layout = self._layout(anchors)
        for layer, (stacked, pattern) in zip(self.layers, layout[: len(self.layers)], strict=True):
            layer.active, layer.pattern = stacked, pattern
        for group, (stacked, pattern) in zip(self.groups, layout[len(self.layers) :], strict=True):
            group.use((stacked, pattern))

    def _layout(self, anchors: tuple[int, ...]) -> list[tuple[StackedLora, tuple]]:
        """Every layer's gathered factors, then every group's (its members' gathered A, concatenated)."""
        key = (anchors, self.layers[0].A_cat.device)  # a model moved to another device gathers anew
        if key in self._layouts:
            self._layouts.move_to_end(key)
            return self._layouts[key]
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
        layout = [(by_layer[id(layer)], column_pattern(by_layer[id(layer)])) for layer in self.layers]
        layout += [(stacked, column_pattern(stacked)) for stacked in groups]
        if self.cache_size > 0:
            self._layouts[key] = layout
            while len(self._layouts) > self.cache_size:
                self._layouts.popitem(last=False)
        return layout

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

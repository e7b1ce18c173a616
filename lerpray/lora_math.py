"""Exact stacked-LoRA math: every anchor's low-rank update, weighted per batch row, with no factor blending.

Anchor k adapts a target layer with A_k [r_k, d_in], B_k [d_out, r_k] and scale s_k (lora_alpha / r_k, or
lora_alpha / sqrt(r_k) for rsLoRA). For a row with coefficients c [K] the layer computes

    y = W0 x + sum_k c_k * s_k * B_k (A_k x)

In loop form, for a batch x [N, T, d_in] and coefficients C [N, K] (the tests' `lerpray.testing.reference_delta`):

    for n in range(N):
        for k in range(K):
            if anchor k adapts this layer:
                delta[n] += C[n, k] * s_k * (x[n] @ A_k.T) @ B_k.T

`stack_factors` concatenates the anchors once (A_cat [R, d_in], B_cat [d_out, R], R = sum of the present ranks);
`stacked_delta` then computes the same sum as two dense matmuls and one row scaling (`shrink`, then `expand_add_`):

    delta = ((x @ A_cat.T) * C_r[:, None, :]) @ B_cat.T        C_r[n, j] = C[n, owner[j]] * col_scale[j]

This equals PEFT's `add_weighted_adapter(..., combination_type="cat")`.

Cost by active anchors: an anchor whose coefficient column is zero in every row adds exactly nothing, so a step
needs only the rank columns of the anchors its rows use. `active_anchors(C)` lists them and
`gather_anchors(stacked, anchors)` keeps only their columns (owner still indexes C's K axis), so

    for n in range(N):
        for k in anchors:                     # instead of range(K): the skipped terms are C[n, k] * ... = 0
            delta[n] += C[n, k] * s_k * (x[n] @ A_k.T) @ B_k.T

is `stacked_delta(x, C, gather_anchors(stacked, active_anchors(C)))`: the same sum over fewer columns (equal to
the full stacked path up to float summation order; bit-equal to a layer that loads only those anchors). A
`capacity` pads the gathered columns to a static width with zero columns (scale 0) for CUDA graphs. Blending A and B separately (PEFT's or
LoRAX's "linear" merge) is a different, approximate model: it adds cross terms B_i A_j. Never blend factors.
Pure torch: no I/O, no HF, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CoeffsShapeError",
    "StackedLora",
    "active_anchors",
    "gather_anchors",
    "column_weights",
    "lora_scale",
    "expand_add_",
    "merged_delta",
    "shrink",
    "stack_factors",
    "stacked_delta",
]

Factors = tuple[Tensor, Tensor, float]  # (A [r, d_in], B [d_out, r], scale)


class CoeffsShapeError(ValueError):
    """Coefficients or factors whose shapes do not fit the layer or the batch."""


def lora_scale(lora_alpha: float, r: int, use_rslora: bool) -> float:
    """PEFT's LoRA scaling factor.

    Args:
        lora_alpha: the adapter's `lora_alpha`.
        r: the adapter's rank.
        use_rslora: rank-stabilised LoRA (Kalajdzievski 2023) divides by sqrt(r) instead of r.

    Returns:
        s = lora_alpha / sqrt(r) if use_rslora else lora_alpha / r.
    """
    if r <= 0:
        raise CoeffsShapeError(f"LoRA rank must be positive, got r={r}")
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


@dataclass
class StackedLora:
    """All anchors that adapt one target layer, concatenated along the rank axis."""

    A_cat: Tensor  # [R, d_in]
    B_cat: Tensor  # [d_out, R]
    owner: Tensor  # [R] long: anchor index (0..K-1) of each rank column
    col_scale: Tensor  # [R] float32: s_k of the column's anchor
    num_anchors: int  # K: length of a coefficient row (anchors absent here included)


def stack_factors(factors: Sequence[Factors | None]) -> StackedLora | None:
    """Concatenate the anchors' factors for one layer.

    Args:
        factors: one entry per anchor, in coefficient order: (A [r_k, d_in], B [d_out, r_k], s_k), or None where
            anchor k does not adapt this layer (it then contributes nothing here, whatever its coefficient).

    Returns:
        The stacked factors (in the dtype/device of the first present A), or None when no anchor adapts the layer.
    """
    present = [(k, f) for k, f in enumerate(factors) if f is not None]
    if not present:
        return None
    d_out, d_in = present[0][1][1].shape[0], present[0][1][0].shape[1]
    for k, (A, B, _) in present:
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1] or A.shape[1] != d_in or B.shape[0] != d_out:
            raise CoeffsShapeError(
                f"anchor {k}: expected A [r, {d_in}] and B [{d_out}, r], got A {list(A.shape)} and B {list(B.shape)}"
            )
    first_A = present[0][1][0]
    A_cat = torch.cat([A.to(first_A) for _, (A, _, _) in present], dim=0)  # [R, d_in]
    B_cat = torch.cat([B.to(first_A) for _, (_, B, _) in present], dim=1)  # [d_out, R]
    owner = torch.cat([torch.full((A.shape[0],), k, dtype=torch.long) for k, (A, _, _) in present])  # [R]
    col_scale = torch.cat([torch.full((A.shape[0],), float(s)) for _, (A, _, s) in present])  # [R]
    return StackedLora(A_cat, B_cat, owner.to(first_A.device), col_scale.to(first_A.device), len(factors))


def active_anchors(coeffs: Tensor) -> list[int]:
    """The anchors some row uses: indices of the columns of coeffs [N, K] that are not all zero, ascending.

    Reads the coefficients on the host (a device sync on CUDA): call it outside a captured CUDA graph.
    """
    if coeffs.dim() != 2:
        raise CoeffsShapeError(f"coefficients must have shape [N, K], got {list(coeffs.shape)}")
    return torch.nonzero((coeffs != 0).any(0)).flatten().tolist()


def gather_anchors(stacked: StackedLora, anchors: Sequence[int], capacity: int | None = None) -> StackedLora:
    """The rank columns of `anchors` only, in stacked order; `owner` keeps indexing the full K coefficient axis.

    Args:
        stacked: the layer's stacked factors over all K anchors.
        anchors: anchor indices in [0, K) (any order, duplicates ignored); anchors absent from this layer add
            no column.
        capacity: pad to this many columns with zero columns (A rows and B columns zero, owner 0, scale 0), so
            the shapes stay static while the anchors change; None keeps exactly the anchors' columns.

    Returns:
        StackedLora with R' = sum of the kept anchors' ranks (or `capacity`) columns, num_anchors K.
    """
    bad = [k for k in anchors if not 0 <= k < stacked.num_anchors]
    if bad:
        raise CoeffsShapeError(f"anchor indices {bad} are outside [0, {stacked.num_anchors})")
    wanted = torch.zeros(stacked.num_anchors, dtype=torch.bool, device=stacked.owner.device)
    wanted[list(anchors)] = True
    cols = torch.nonzero(wanted[stacked.owner]).flatten()  # [R']
    A = stacked.A_cat.index_select(0, cols)  # [R', d_in]
    B = stacked.B_cat.index_select(1, cols)  # [d_out, R']
    owner, scale = stacked.owner[cols], stacked.col_scale[cols]
    if capacity is not None:
        pad = capacity - cols.numel()
        if pad < 0:
            raise CoeffsShapeError(f"the anchors {list(anchors)} need {cols.numel()} rank columns, over the "
                                   f"capacity of {capacity}: raise the capacity or activate fewer anchors")
        A = torch.cat([A, A.new_zeros(pad, A.shape[1])])
        B = torch.cat([B, B.new_zeros(B.shape[0], pad)], dim=1)
        owner = torch.cat([owner, owner.new_zeros(pad)])
        scale = torch.cat([scale, scale.new_zeros(pad)])
    return StackedLora(A, B, owner, scale, stacked.num_anchors)


def column_weights(coeffs: Tensor, stacked: StackedLora) -> Tensor:
    """Expand per-anchor coefficients to per-rank-column weights.

    Args:
        coeffs: [N, K] one mix per batch row.
        stacked: the layer's stacked factors.

    Returns:
        C_r [N, R] float32 with C_r[n, j] = coeffs[n, owner[j]] * col_scale[j].
    """
    if coeffs.dim() != 2 or coeffs.shape[1] != stacked.num_anchors:
        raise CoeffsShapeError(
            f"coefficients must have shape [N, {stacked.num_anchors}] (one column per anchor), "
            f"got {list(coeffs.shape)}"
        )
    coeffs = coeffs.to(device=stacked.owner.device, dtype=torch.float32)
    return coeffs[:, stacked.owner] * stacked.col_scale  # [N, R]


def shrink(x: Tensor, A_cat: Tensor, col: Tensor) -> Tensor:
    """The weighted projection onto every anchor's rank columns: (x @ A_cat.T) * col.

    Args:
        x: [N, ..., d_in] layer input; A_cat: [R, d_in]; col: [N, R] per-column weights (`column_weights`, in x's
            dtype), row n scaling every token of batch row n.

    Returns:
        h [N, ..., R] in x's dtype (a fresh tensor, scaled in place).
    """
    h = x @ A_cat.T  # [N, .., R]
    return h.mul_(col.view(col.shape[0], *([1] * (x.dim() - 2)), col.shape[1]))


def expand_add_(y: Tensor, h: Tensor, B_cat: Tensor) -> Tensor:
    """y += h @ B_cat.T in place (one addmm, no temporary). y [N, .., d_out] contiguous, h [N, .., R]."""
    y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), B_cat.T)
    return y


def stacked_delta(x: Tensor, coeffs: Tensor, stacked: StackedLora) -> Tensor:
    """The weighted sum of all anchors' updates, a different mix per batch row: `expand_add_` of `shrink`.

    Args:
        x: [N, ..., d_in] inputs (usually [N, T, d_in]); row n uses coeffs[n] for all its tokens.
        coeffs: [N, K] coefficients, N equal to the batch size.
        stacked: the layer's stacked factors.

    Returns:
        [N, ..., d_out] in x's dtype: sum_k coeffs[n, k] * s_k * B_k A_k x[n].
    """
    if x.shape[0] != coeffs.shape[0]:
        raise CoeffsShapeError(
            f"coefficients have {coeffs.shape[0]} rows but the batch has {x.shape[0]}: "
            "set one coefficient row per batch row"
        )
    h = shrink(x, stacked.A_cat, column_weights(coeffs, stacked).to(x.dtype))  # [N, .., R]
    y = x.new_zeros(*x.shape[:-1], stacked.B_cat.shape[0])
    return expand_add_(y, h, stacked.B_cat)


def merged_delta(coeffs: Tensor, stacked: StackedLora) -> Tensor:
    """The dense weight update of one mix: sum_k c_k * s_k * B_k @ A_k.

    Args:
        coeffs: [K] one mix.
        stacked: the layer's stacked factors.

    Returns:
        [d_out, d_in] float32 (add it to W0 in float32, then round to the layer's dtype).
    """
    if coeffs.dim() != 1:
        raise CoeffsShapeError(f"merged_delta takes one mix of shape [K], got {list(coeffs.shape)}")
    col = column_weights(coeffs[None, :], stacked)[0]  # [R]
    return (stacked.B_cat.float() * col) @ stacked.A_cat.float()  # [d_out, d_in]

"""Projections that read the same input share one shrink matmul: x @ [A_q; A_k; A_v].T instead of three.

In a Llama block q_proj, k_proj and v_proj all read the normed hidden states, and gate_proj and up_proj read the
same MLP input. A `ShrinkGroup` stacks its members' A_cat factors once (the members' own A_cat become views of it,
so nothing is stored twice) and, on the first member's call with a new input, computes the whole projection and its
per-column weighting in two kernels; the other members take their slice. The expand (B) matmuls stay per member,
since each writes its own output. Identical math to one shrink per member (the same dot products), fewer and
fatter kernels: what matters on a GPU, where a decode step is launch-bound.

Members recognise "the same input" by tensor identity: HF passes one hidden-states tensor to all of them. A member
called with another input (or out of order) computes its own slice, so a model that does not share inputs is
still exact, just not fused.

Per forward a group may run over the columns of the anchors its rows use only (`use`, driven by mix_state.py):
its shrink is then one matmul over the members' gathered A, each member taking its slice.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lerpray.lora_math import StackedLora, shrink

__all__ = ["SIBLINGS", "ShrinkGroup", "group_siblings"]

# Projections that read one input, by the names HF models give them.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"), ("w1", "w3"))


class ShrinkGroup:
    """Sibling layers sharing one stacked A. Not thread-safe (like the model it belongs to).

    Members are interpolated layers (interpolated.py, which builds the groups; this file does not import it): modules
    with buffers `A_cat` [r, d_in], `owner` and `col_scale` [r], and attributes `num_anchors`, `in_features`, `group`.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        self.members = members
        # The group's factors are buffers of its first member, so they follow the model across .to(device).
        lead = members[0]
        lead.register_buffer("group_A_cat", torch.cat([m.A_cat for m in members]), persistent=False)  # [R_g, d_in]
        lead.register_buffer("group_owner", torch.cat([m.owner for m in members]), persistent=False)  # [R_g]
        lead.register_buffer("group_col_scale", torch.cat([m.col_scale for m in members]), persistent=False)
        self.full_pattern = (tuple(lead.group_owner.tolist()), tuple(lead.group_col_scale.tolist()), lead.A_cat.dtype)
        self.pattern = self.full_pattern  # of the columns in use (all anchors, or this forward's active ones)
        self.active: StackedLora | None = None  # the active anchors' gathered shrink side; None: all anchors
        self.slices: dict[int, slice] = {}
        start = 0
        for member in members:
            rank = member.A_cat.shape[0]
            self.slices[id(member)] = slice(start, start + rank)
            member.A_cat = lead.group_A_cat[start : start + rank]  # a view: A is stored once
            member.group = self
            start += rank
        self.active_slices = self.slices
        self._input: Tensor | None = None
        self._projected: Tensor | None = None  # [N, T, R_group], already weighted per column
        self._pending = 0  # members yet to take their slice of _projected

    @property
    def A_cat(self) -> Tensor:
        return self.members[0].group_A_cat

    @property
    def stacked(self) -> StackedLora:
        """The group's shrink side as one StackedLora (the expands stay per member, so B is empty)."""
        lead = self.members[0]
        return StackedLora(lead.group_A_cat, lead.group_A_cat.new_empty(0), lead.group_owner, lead.group_col_scale,
                           lead.num_anchors)

    def factors(self) -> StackedLora:
        """The shrink side in use this forward: the active anchors' gathered columns, or all of them."""
        return self.active if self.active is not None else self.stacked

    def use(self, active: tuple[StackedLora, tuple] | None) -> None:
        """Run over `active` = (gathered factors, pattern), the members' own `active` set first; None: all anchors."""
        if active is None:
            self.active, self.pattern, self.active_slices = None, self.full_pattern, self.slices
        else:
            (self.active, self.pattern), start, self.active_slices = active, 0, {}
            for member in self.members:
                rank = member.active.A_cat.shape[0]
                self.active_slices[id(member)] = slice(start, start + rank)
                start += rank
        self._input = self._projected = None

    def projection(self, member: nn.Module, x: Tensor, col: Tensor) -> Tensor:
        """(x @ A_member.T) * col_member [N, T, r_member]; `col` [N, R_group] is the group's column weights."""
        if self._input is not x:
            self._input, self._projected, self._pending = x, shrink(x, self.factors().A_cat, col), len(self.members)
        part = self._projected[..., self.active_slices[id(member)]]
        self._pending -= 1
        if self._pending == 0:  # every member served: drop the input so its memory can go
            self._input = self._projected = None
        return part


def group_siblings(layers: dict[str, nn.Module]) -> list[ShrinkGroup]:
    """Group layers (module path -> layer) that are siblings of one block reading one input, with equal d_in
    and dtype. Layers outside any group keep their own shrink."""
    groups = []
    for parent in dict.fromkeys(path.rpartition(".")[0] for path in layers):
        for names in SIBLINGS:
            members = [layers[f"{parent}.{n}"] for n in names if f"{parent}.{n}" in layers]
            if len(members) > 1 and len({(m.in_features, m.A_cat.dtype, m.A_cat.device) for m in members}) == 1:
                groups.append(ShrinkGroup(members))
    return groups

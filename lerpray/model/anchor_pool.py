"""Anchors paged by use: an interpolated model whose coefficient axis is `capacity` anchor SLOTS, not anchors.

Many anchor sets trained on one base model are held in host memory; at most `capacity` of their anchors are resident
in the model at once. Every adapted layer owns static buffers of `capacity` x `max_rank` rank columns (the union of
the sets' target layers, the largest rank among them), so the model's shapes never change while sets come and go
(what a captured CUDA graph needs). What slot j holds in layer L, columns j * max_rank ... (j + 1) * max_rank:

    slot j holds anchor a (rank r_a, scale s_a) that adapts L:  A[cols] = [A_a; 0],  B[:, cols] = [s_a * B_a, 0]
    a free slot, or an anchor that does not adapt L:            zeros

`owner` (the slot of each column) and `col_scale` (1: the scale is folded into B) never change either, so every
layer has one column pattern whatever is loaded. Zero columns add exactly nothing, so a row that puts anchor a's
coefficient on slot j computes PEFT's `cat` of its set, as if the set were the model's only one (to float rounding:
s_a is applied to B_a instead of to the shrink's output).

Paging (`place`): a set that is not resident is copied into free slots in place; when too few are free, the least
recently used resident sets that are not `busy` (named by a queued or running request) are evicted (their slots
zeroed) until it fits. A set's slots need not be contiguous. After every write the model's gathered copies are
dropped (MixState.invalidate). A set that can never be resident (more anchors than the capacity, a rank over
`max_rank`, a layer outside the pool) is kept with the reason (`problem`) and refused with UnloadableSetError.
Sets may also come and go after the pool is built (`prepare_set`, then `add_set`; `remove_set`): a multiplexed
replica registers each set Ray Serve loads on it (lerpray.serve.replica_bases). `build_pool(target_modules=...,
max_rank=...)` reserves the layers and rank of sets not yet registered.
Not thread-safe: page (and add or remove sets) between forward passes, from the thread that drives the model
(lerpray.model.paged_engine queues registrations from other threads).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from lerpray.anchors.format import check_compatible, model_identity
from lerpray.lora_math import Factors
from lerpray.mixing import AnchorLayout
from lerpray.model.base import ModelMismatchError, check_model_fits
from lerpray.model.interpolated import InterpolatedModel, _in_out, inject
from lerpray.model.requests import UnloadableSetError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from lerpray.anchors import AnchorSet
    from lerpray.anchors.format import BaseModelIdentity

__all__ = ["AnchorPool", "PagingStats", "UnloadableSetError", "build_pool"]


@dataclass
class PagingStats:
    page_ins: int = 0
    evictions: int = 0
    load_s: float = 0.0  # seconds spent copying sets in, in all
    last_load_s: float = 0.0
    loads: dict[str, int] = field(default_factory=dict)  # set name -> times paged in


class AnchorPool:
    """The slots of a pooled InterpolatedModel and which set holds which (see the module docstring).

    Args:
        imodel: built by `build_pool` (its anchors are the slots).
        sets: set name -> its anchors' factors (module path -> (A, B, scale)), in the set's coefficient order.
        max_rank: rank columns per slot.
        problems: set name -> why it can never be resident.
    """

    def __init__(self, imodel: InterpolatedModel, sets: Mapping[str, list[dict[str, Factors]]], max_rank: int,
                 problems: Mapping[str, str], identity: BaseModelIdentity | None = None) -> None:  # fmt: skip
        self.imodel, self.max_rank, self.identity = imodel, max_rank, identity
        self.capacity = imodel.num_anchors
        self._sets, self._problems = dict(sets), dict(problems)
        self._resident: OrderedDict[str, tuple[int, ...]] = OrderedDict()  # least recently used first
        self._free = list(range(self.capacity))
        self.stats = PagingStats()

    @property
    def sets(self) -> list[str]:
        return list(self._sets)

    @property
    def resident(self) -> dict[str, tuple[int, ...]]:
        """Resident set -> its slots (own anchor k at slots[k]), least recently used first."""
        return dict(self._resident)

    def anchors_of(self, name: str) -> int:
        self.check(name)
        return len(self._sets[name])

    def problem(self, name: str) -> str | None:
        """Why `name` can never be resident here (None: it can)."""
        if name not in self._sets:
            return f"no anchor set {name!r} in this engine; it holds {sorted(self._sets)}"
        return self._problems.get(name)

    def check(self, name: str) -> None:
        if (problem := self.problem(name)) is not None:
            raise UnloadableSetError(problem)

    def can_place(self, name: str, busy: Collection[str] = ()) -> bool:
        """Whether `place(name, busy)` would succeed now (True for a resident set)."""
        self.check(name)
        if name in self._resident:
            return True
        evictable = sum(len(slots) for s, slots in self._resident.items() if s not in busy)
        return len(self._free) + evictable >= len(self._sets[name])

    def place(self, name: str, busy: Collection[str] = ()) -> tuple[int, ...] | None:
        """The slots of set `name`, paging it in (and evicting the least recently used sets not in `busy`) if it is
        not resident; None, with nothing evicted, when the sets in `busy` hold too many slots for it to fit now."""
        if not self.can_place(name, busy):
            return None
        if name in self._resident:
            self._resident.move_to_end(name)
            return self._resident[name]
        start = time.perf_counter()
        anchors = self._sets[name]
        while len(self._free) < len(anchors):
            self.evict(next(s for s in self._resident if s not in busy))
        slots, self._free = tuple(self._free[: len(anchors)]), self._free[len(anchors) :]
        for slot, modules in zip(slots, anchors, strict=True):
            self._write(slot, modules)
        self._resident[name] = slots
        self.imodel._state.invalidate()  # the layers' gathered and pinned copies hold the slots' old columns
        took = time.perf_counter() - start
        self.stats.page_ins, self.stats.last_load_s = self.stats.page_ins + 1, took
        self.stats.load_s += took
        self.stats.loads[name] = self.stats.loads.get(name, 0) + 1
        return slots

    def evict(self, name: str) -> None:
        """Drop a resident set: its slots are zeroed and free (the caller makes sure no row uses it)."""
        slots = self._resident.pop(name)
        for slot in slots:
            self._write(slot, {})
        self._free = sorted(self._free + list(slots))
        self.imodel._state.invalidate()
        self.stats.evictions += 1

    def prepare_set(self, name: str, anchor_set: AnchorSet) -> tuple[list[dict[str, Factors]], str | None]:
        """(the set's factors in host memory, why it can never be resident here or None); reads nothing of the pool
        that changes, so any thread may call it. Raises ModelMismatchError for a set on another base model."""
        if self.identity is not None:
            try:
                check_compatible(anchor_set.manifest, self.identity)
            except Exception as err:
                raise ModelMismatchError(f"anchor set {name!r} does not fit the pool's base model: {err}") from err
        held = _host_copy(anchor_set)
        shapes = {path: (layer.in_features, layer.out_features) for path, layer in self.imodel.layers.items()}
        return held, _problem(name, held, self.capacity, self.max_rank, shapes)

    def add_set(self, name: str, held: list[dict[str, Factors]], problem: str | None = None) -> None:
        """Register a set (prepare_set's result) to page in on use; a set of that name is replaced (evicted first)."""
        if name in self._sets:
            self.remove_set(name)
        self._sets[name] = held
        if problem is not None:
            self._problems[name] = problem

    def remove_set(self, name: str) -> None:
        """Forget a set (evicted if resident; the caller makes sure no row uses it)."""
        if name in self._resident:
            self.evict(name)
        self._sets.pop(name, None)
        self._problems.pop(name, None)

    @torch.no_grad()
    def _write(self, slot: int, modules: Mapping[str, Factors]) -> None:
        """Slot `slot` of every pooled layer := the anchor's factors (scale folded into B), zeros elsewhere."""
        cols = slice(slot * self.max_rank, (slot + 1) * self.max_rank)
        for path, layer in self.imodel.layers.items():
            A, B = layer.A_cat[cols], layer.B_cat[:, cols]  # views: a grouped layer's A is its group's (in place)
            A.zero_()
            B.zero_()
            if path in modules:
                a, b, scale = modules[path]
                A[: a.shape[0]].copy_(a)
                B[:, : b.shape[1]].copy_(b.float() * scale)


def build_pool(model: PreTrainedModel, sets: Mapping[str, AnchorSet], capacity: int, *, max_rank: int | None = None,
               gather_active: bool = True, target_modules: Collection[str] = ()) -> AnchorPool:  # fmt: skip
    """Interpolate `model` (in place) with `capacity` empty anchor slots over every layer some set adapts, and keep
    the sets (all trained on this base model) in host memory to page in on use.

    Args:
        model: the sets' base model, not yet interpolated.
        sets: set name -> anchor set; the sets are checked against the model here (ModelMismatchError naming one).
        capacity: anchors resident at once.
        max_rank: rank columns per slot; default the largest rank of the sets that fit the capacity.
        gather_active: as for `interpolate` (each forward pays for the slots its rows use).
        target_modules: leaf names (e.g. "q_proj") whose linear layers are pooled too, for sets added later.

    Returns:
        The pool; `pool.imodel` is the model to build the Engine over (merged fast path off: its cache would outlive
        a page-in).
    """
    if capacity < 1 or not sets:
        raise ValueError(f"an anchor pool needs a capacity of at least 1 anchor and at least one set, got {capacity} "
                         f"and {len(sets)} sets")  # fmt: skip
    identity = model_identity(model, "the pool's base model")
    held: dict[str, list[dict[str, Factors]]] = {}
    for name, anchor_set in sets.items():
        try:
            check_model_fits(anchor_set.manifest, model)
        except ModelMismatchError as err:
            raise ModelMismatchError(f"anchor set {name!r} does not fit the pool's base model (every set in one "
                                     f"engine must be trained on the same base): {err}") from err  # fmt: skip
        held[name] = _host_copy(anchor_set)
    fitting = [anchors for anchors in held.values() if len(anchors) <= capacity]
    max_rank = max_rank or max((_rank(a) for a in fitting), default=1)
    shapes: dict[str, tuple[int, int]] = {}  # path -> (d_in, d_out)
    for path, module in model.named_modules():
        if path.rpartition(".")[2] in target_modules and (in_out := _in_out(module)) is not None:
            shapes[path] = in_out
    for anchors in fitting:
        shapes.update({path: (A.shape[1], B.shape[0]) for m in anchors for path, (A, B, _) in m.items()})
    problems = {name: p for name, anchors in held.items() if (p := _problem(name, anchors, capacity, max_rank, shapes))}
    layout = AnchorLayout(anchors=tuple(f"slot{j}" for j in range(capacity)), attributes={})
    empty = {path: (torch.zeros(max_rank, d_in), torch.zeros(d_out, max_rank), 1.0)  # [R, d_in], [d_out, R]
             for path, (d_in, d_out) in shapes.items()}
    imodel = inject(model, layout, [empty] * capacity, merge_cache_size=0, gather_active=gather_active)
    return AnchorPool(imodel, held, max_rank, problems, identity)


def _host_copy(anchor_set: AnchorSet) -> list[dict[str, Factors]]:
    return [{path: (A.detach().cpu(), B.detach().cpu(), float(s)) for path, (A, B, s) in a.modules.items()}
            for a in anchor_set.anchors]  # fmt: skip


def _rank(anchors: list[dict[str, Factors]]) -> int:
    return max((f[0].shape[0] for m in anchors for f in m.values()), default=0)


def _problem(name: str, anchors: list[dict[str, Factors]], capacity: int, max_rank: int,
             shapes: Mapping[str, tuple[int, int]]) -> str | None:  # fmt: skip
    """Why the set can never be resident in a pool of this shape (None: it can)."""
    paths = {path for m in anchors for path in m}
    if len(anchors) > capacity:
        return (f"anchor set {name!r} has {len(anchors)} anchors, more than this engine's anchor capacity of "
                f"{capacity}: raise anchor_capacity to at least {len(anchors)}")
    if _rank(anchors) > max_rank:
        return (f"anchor set {name!r} has rank {_rank(anchors)}, more than the pool's {max_rank} rank columns per "
                f"anchor: serve it with a pool whose max_rank is at least {_rank(anchors)}")
    if not paths <= shapes.keys():
        return (f"anchor set {name!r} adapts {sorted(paths - shapes.keys())[:3]}, which no layer of the pool holds: "
                "serve it with a pool built with this set")
    wrong = [path for m in anchors for path, (A, B, _) in m.items() if (A.shape[1], B.shape[0]) != shapes[path]]
    if wrong:
        return f"anchor set {name!r} has factors of the wrong shape for {wrong[:3]}: it is not on the pool's base model"
    return None

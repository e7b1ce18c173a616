"""Inject the anchors into an HF causal LM: each target layer adds every anchor's update, weighted per batch row.

`interpolate(model, anchor_set)` replaces each adapted nn.Linear (or GPT-2 Conv1D) in place by an
`InterpolatedLinear` that computes y = W0 x + stacked_delta(x, coeffs, stacked) (see lerpray.lora_math; siblings that
read one input share the shrink, lora_groups.py; each forward pays only for the anchors its rows use, mix_state.py),
and returns an `InterpolatedModel` through which callers set the coefficients before their forward passes:

    imodel = interpolate(model, anchor_set)
    imodel.set_coeffs(coeffs)            # [N, K]: row n of the next batches uses mix coeffs[n]
    logits = imodel(input_ids).logits
    with imodel.merged(coeffs[0]):       # fast path when every row shares one mix: W = W0 + delta, cached
        logits = imodel(input_ids).logits

The layers keep the base layer's `weight` and `bias` under the same names (state_dict keys, hence `model_identity`,
unchanged); the stacked factors are non-persistent buffers. Not thread-safe: one forward at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lerpray.lora_math import CoeffsShapeError, Factors, StackedLora, expand_add_, merged_delta, shrink, stack_factors
from lerpray.model.base import ModelMismatchError, check_model_fits
from lerpray.model.lora_groups import ShrinkGroup, group_siblings
from lerpray.model.mix_state import CoeffsNotSetError, MixState, column_pattern

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from lerpray.anchors import AnchorSet
    from lerpray.mixing import AnchorLayout

__all__ = ["CoeffsNotSetError", "InterpolatedLinear", "InterpolatedModel", "inject", "interpolate"]


def _is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def _in_out(module: nn.Module) -> tuple[int, int] | None:
    """(d_in, d_out) of an adaptable layer, None for any other module. Conv1D stores its weight as [d_in, d_out]."""
    if _is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]
    if type(module) is nn.Linear:
        return module.in_features, module.out_features
    return None


class InterpolatedLinear(nn.Module):
    """A Linear/Conv1D plus the stacked updates of all anchors that adapt it."""

    def __init__(self, base: nn.Module, stacked: StackedLora, state: MixState) -> None:
        super().__init__()
        self.fan_in_fan_out = _is_conv1d(base)  # weight is [d_in, d_out] (GPT-2 Conv1D)
        self.weight = base.weight
        self.bias = base.bias
        self.in_features, self.out_features = _in_out(base)
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.register_buffer("A_cat", stacked.A_cat.to(**like), persistent=False)  # [R, d_in]
        self.register_buffer("B_cat", stacked.B_cat.to(**like), persistent=False)  # [d_out, R]
        self.register_buffer("owner", stacked.owner.to(like["device"]), persistent=False)  # [R]
        self.register_buffer("col_scale", stacked.col_scale.to(like["device"]), persistent=False)  # [R] float32
        self.num_anchors = stacked.num_anchors
        # Layers with equal patterns share their per-column weights within a forward (see MixState).
        self.full_pattern = column_pattern(self.stacked)
        self.pattern = self.full_pattern  # of the columns in use this forward
        self.active: StackedLora | None = None  # the active anchors' gathered columns (MixState); None: all anchors
        self._state = state
        self.group: ShrinkGroup | None = None  # siblings sharing this layer's input share one shrink matmul
        self.merged_weight: Tensor | None = None  # [d_out, d_in] while InterpolatedModel.merged() is active

    @property
    def stacked(self) -> StackedLora:
        return StackedLora(self.A_cat, self.B_cat, self.owner, self.col_scale, self.num_anchors)

    def factors(self) -> StackedLora:
        """The stacked factors in use this forward: the active anchors' columns, or all of them."""
        return self.active if self.active is not None else self.stacked

    def base_weight(self) -> Tensor:
        """W0 in nn.Linear layout [d_out, d_in] (a view for Conv1D, no copy)."""
        return self.weight.T if self.fan_in_fan_out else self.weight

    def forward(self, x: Tensor) -> Tensor:  # x [N, T, d_in] -> [N, T, d_out]
        if self.merged_weight is not None:
            return F.linear(x, self.merged_weight, self.bias)
        rows = self._state.rows()
        if x.shape[0] != rows:
            raise CoeffsShapeError(
                f"coefficients have {rows} rows but the batch has {x.shape[0]}: set one coefficient row per batch row"
            )
        y = F.linear(x, self.base_weight(), self.bias)  # [N, T, d_out]
        unit = self.group or self  # a group shares one shrink over its members' columns
        if unit.factors().A_cat.shape[0] == 0:  # no anchor used this forward adapts this layer: no LoRA work
            return y
        col = self._state.columns(unit)  # [N, R] (the group's columns when grouped)
        factors = self.factors()
        h = self.group.projection(self, x, col) if self.group is not None else shrink(x, factors.A_cat, col)
        if h.shape[-1] == 0:  # grouped, but none of this forward's anchors adapts this member
            return y
        return expand_add_(y, h, factors.B_cat)  # y += h @ B_cat.T, in place

    @torch.no_grad()
    def merge(self, coeffs: Tensor) -> Tensor:
        """W0 + merged_delta(coeffs) [d_out, d_in], summed in float32 and rounded to the layer's dtype once."""
        return (self.base_weight().float() + merged_delta(coeffs, self.stacked)).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.A_cat.shape[0]}, "
            f"anchors={self.num_anchors}, conv1d={self.fan_in_fan_out}"
        )


class InterpolatedModel:
    """An HF causal LM whose target layers add the anchors' updates; call it like the model.

    Attributes:
        model: the wrapped causal LM (modified in place by `interpolate`).
        layout: anchor order and attributes (coefficient order everywhere).
        layers: module path -> InterpolatedLinear.
        blocks: anchor set name -> its anchors' range of the coefficient axis (several sets over one base,
            multi_set.py); one block named "" for a single set.
    """

    def __init__(
        self, model: PreTrainedModel, layout: AnchorLayout, layers: dict[str, InterpolatedLinear], state: MixState,
        merge_cache_size: int = 4, blocks: dict[str, range] | None = None,
    ) -> None:
        self.model = model
        self.layout = layout
        self.blocks = blocks if blocks is not None else {"": range(len(layout.anchors))}
        self.layers = layers
        self._state = state
        self._merge_cache_size = merge_cache_size
        self._merge_cache: OrderedDict[tuple[float, ...], dict[str, Tensor]] = OrderedDict()

    num_anchors = property(lambda self: len(self.layout.anchors))

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def _as_coeffs(self, coeffs: Tensor | Sequence, ndim: int) -> Tensor:
        coeffs = torch.as_tensor(coeffs, dtype=torch.float32)
        shape = "[N, K]" if ndim == 2 else "[K]"
        if coeffs.dim() != ndim or coeffs.shape[-1] != self.num_anchors:
            raise CoeffsShapeError(
                f"coefficients must have shape {shape} with K={self.num_anchors} (anchors {list(self.layout.anchors)})"
                f", got {list(coeffs.shape)}"
            )
        if not torch.isfinite(coeffs).all():
            raise CoeffsShapeError(f"coefficients must be finite, got {coeffs.tolist()}")
        return coeffs

    def set_coeffs(self, coeffs: Tensor | Sequence[Sequence[float]]) -> None:
        """Set the mixes of the next forward passes: coeffs [N, K], row n for batch row n (N must equal the batch)."""
        coeffs = self._as_coeffs(coeffs, 2)
        device = next(iter(self.layers.values())).A_cat.device
        self._state.set(coeffs.to(device))

    def bind_coeffs(self, coeffs: Tensor, host: Tensor | None = None) -> None:
        """Use `coeffs` [N, K] as is (float32, on the layers' device, validated by the caller): no copy, no check.
        `host`: the same values in host memory, read to find the active anchors without a device sync.

        For the engine's coefficient rows, which it updates in place between forwards and which a captured CUDA
        graph reads as a static input; `set_coeffs` is the checked form.
        """
        self._state.set(coeffs, host)

    def pin_active(self, capacity: int) -> None:
        """Static buffers for up to `capacity` active anchors: a CUDA graph captured from now on (or a forward
        inside `static_active`) runs over them instead of every anchor's columns (mix_state.py)."""
        self._state.pin(capacity)

    def prepare_active(self, coeffs: Tensor) -> bool:
        """Fill the pinned buffers with the anchors coeffs [N, K] (host values) uses, before a replay; False when
        they exceed the capacity (run that step eagerly: the dynamic gather has no limit)."""
        return self._state.prepare(coeffs)

    @contextmanager
    def static_active(self, pinned: bool = True) -> Iterator[None]:
        """Forwards run as a captured graph does, over the pinned buffers (or every anchor's columns)."""
        self._state.static_forwards, self._state.static_pinned = True, pinned
        try:
            yield
        finally:
            self._state.static_forwards, self._state.static_pinned = False, True

    @contextmanager
    def merged(self, coeffs: Tensor | Sequence[float]) -> Iterator[InterpolatedModel]:
        """Run every row with one mix merged into the weights: W = W0 + sum_k c_k s_k B_k A_k (W0 untouched).

        Merged weights are cached per mix (rounded to 6 decimals) in an LRU of `merge_cache_size`
        entries. Memory: each entry is a full copy of every adapted weight matrix (for SmolLM2-135M with all 7
        projections adapted, ~100M parameters: ~0.4 GB in fp32), on top of the base model.
        """
        weights = self._merged_weights(self._as_coeffs(coeffs, 1))
        previous = {path: layer.merged_weight for path, layer in self.layers.items()}
        for path, layer in self.layers.items():
            layer.merged_weight = weights[path]
        try:
            yield self
        finally:
            for path, layer in self.layers.items():
                layer.merged_weight = previous[path]

    def _merged_weights(self, coeffs: Tensor) -> dict[str, Tensor]:
        key = tuple(round(float(c), 6) + 0.0 for c in coeffs.tolist())  # + 0.0: -0.0 and 0.0 share a key
        if key in self._merge_cache:
            self._merge_cache.move_to_end(key)
            return self._merge_cache[key]
        weights = {path: layer.merge(coeffs) for path, layer in self.layers.items()}
        if self._merge_cache_size > 0:
            self._merge_cache[key] = weights
            while len(self._merge_cache) > self._merge_cache_size:
                self._merge_cache.popitem(last=False)
        return weights


def interpolate(
    model: PreTrainedModel, anchor_set: AnchorSet, *, merge_cache_size: int = 4, gather_active: bool = True
) -> InterpolatedModel:
    """Replace every layer that some anchor adapts by an InterpolatedLinear (in place) and wrap the model.

    Args:
        model: an HF causal LM (Llama, Qwen2, Mistral, GPT-2, ...), not yet interpolated.
        anchor_set: its anchors; coefficient k belongs to anchor_set.anchors[k].
        merge_cache_size: LRU size of `InterpolatedModel.merged` (0 disables caching).
        gather_active: each forward runs only the anchors with a non-zero coefficient in some row (mix_state.py);
            False runs every anchor's columns always (the same sums, to float rounding).

    Raises:
        ModelMismatchError: the model is not the anchors' base model, or a module path or shape does not fit.
    """
    check_model_fits(anchor_set.manifest, model)
    layout = anchor_set.manifest.layout()
    names = [anchor.entry.name for anchor in anchor_set.anchors]
    if not names or list(layout.anchors) != names:
        raise ModelMismatchError(f"anchor set holds anchors {names} but its manifest lists {list(layout.anchors)}")
    return inject(model, layout, [anchor.modules for anchor in anchor_set.anchors], merge_cache_size=merge_cache_size,
                  gather_active=gather_active)


def inject(
    model: PreTrainedModel, layout: AnchorLayout, modules: Sequence[dict[str, Factors]], *, merge_cache_size: int = 4,
    gather_active: bool = True, blocks: dict[str, range] | None = None,
) -> InterpolatedModel:
    """`interpolate` once the anchors are checked against the model's identity: modules[k] (module path ->
    factors) is the anchor layout.anchors[k]. Raises ModelMismatchError for a path or shape that does not fit."""
    names = list(layout.anchors)
    per_layer: dict[str, list[Factors | None]] = {}
    for k, anchor_modules in enumerate(modules):
        for path, factors in anchor_modules.items():
            per_layer.setdefault(path, [None] * len(names))[k] = factors
    problems = [p for path, factors in per_layer.items() for p in _check_layer(model, path, factors, names)]
    if problems:
        raise ModelMismatchError(
            f"the anchors do not fit this model ({len(problems)} problem(s)): " + "; ".join(problems[:8])
            + ". Use the base model the anchors were trained on."
        )
    state = MixState(gather=gather_active)
    layers = {}
    for path, factors in per_layer.items():
        layers[path] = InterpolatedLinear(model.get_submodule(path), stack_factors(factors), state)
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, layers[path])
    state.attach(list(layers.values()), group_siblings(layers))
    model.register_forward_pre_hook(state.new_forward)
    return InterpolatedModel(model, layout, layers, state, merge_cache_size, blocks)


def _check_layer(model: nn.Module, path: str, factors: list[Factors | None], names: list[str]) -> list[str]:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return [f"module {path!r} does not exist in {type(model).__name__}"]
    if isinstance(module, InterpolatedLinear):
        return [f"module {path!r} is already interpolated; pass a freshly loaded model"]
    in_out = _in_out(module)
    if in_out is None:
        return [f"module {path!r} is a {type(module).__name__}, not nn.Linear or Conv1D"]
    d_in, d_out = in_out
    return [
        f"anchor {names[k]!r} at {path!r}: A {list(f[0].shape)}, B {list(f[1].shape)} do not fit "
        f"d_in={d_in}, d_out={d_out} (expected A [r, {d_in}], B [{d_out}, r])"
        for k, f in enumerate(factors)
        if f is not None
        and (f[0].dim() != 2 or f[1].dim() != 2 or f[0].shape[1] != d_in or f[1].shape[0] != d_out
             or f[0].shape[0] != f[1].shape[1])
    ]

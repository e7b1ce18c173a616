"""One base, many anchor sets, one model: sets trained on the same base model share one copy of its weights.

`interpolate_sets(model, {"support": set_a, "legal": set_b})` injects every set's anchors into one
InterpolatedModel. The coefficient axis is the concatenation of the sets' axes, each set's anchors one named block
(`imodel.blocks[name]`, a range), the anchors and attributes named "<set>/<name>" in the combined layout. A row of
set s carries its set's coefficients in s's block and zeros elsewhere (`set_row`); zero coefficients cost nothing
and change nothing (mix_state.py), so rows of different sets and mixes share a forward pass and each pays for its
own active anchors only, exactly as rows of one set do:

    imodel = interpolate_sets(model, {"a": set_a, "b": set_b})
    imodel.set_coeffs([set_row(imodel, "a", [0.3, 0.7]), set_row(imodel, "b", [1.0, 0.0, 0.5, 0.5])])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lerpray.lora_math import CoeffsShapeError
from lerpray.mixing import AnchorLayout
from lerpray.model.base import ModelMismatchError, check_model_fits
from lerpray.model.interpolated import InterpolatedModel, inject

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from lerpray.anchors import AnchorSet

__all__ = ["SEPARATOR", "interpolate_sets", "set_row"]

SEPARATOR = "/"  # "<set>/<anchor>" in the combined layout; set names may not contain it


def interpolate_sets(
    model: PreTrainedModel, sets: Mapping[str, AnchorSet], *, merge_cache_size: int = 4, gather_active: bool = True
) -> InterpolatedModel:
    """Interpolate several anchor sets over one copy of their shared base model (in place, like `interpolate`).

    Args:
        model: the base model every set was trained on, not yet interpolated.
        sets: set name -> anchor set, in block order; names non-empty, without "/".
        merge_cache_size, gather_active: as for `interpolate`.

    Returns:
        An InterpolatedModel whose layout concatenates the sets' layouts ("<set>/<anchor>") and whose `blocks` map
        each set name to its range of the coefficient axis.

    Raises:
        ModelMismatchError: a set was trained on another base model (named with the set), or does not fit it.
        ValueError: no sets, or a set name that is empty or holds "/".
    """
    if not sets:
        raise ValueError("interpolate_sets needs at least one anchor set")
    bad = [name for name in sets if not name or SEPARATOR in name]
    if bad:
        raise ValueError(f"anchor set names must be non-empty and free of {SEPARATOR!r}, got {bad}: rename them")
    anchors: list[str] = []
    attributes: dict[str, tuple[str, str]] = {}
    blocks: dict[str, range] = {}
    modules = []
    for name, anchor_set in sets.items():
        try:
            check_model_fits(anchor_set.manifest, model)
        except ModelMismatchError as err:
            raise ModelMismatchError(f"anchor set {name!r} does not fit the shared base model (every set in one "
                                     f"model must be trained on the same base): {err}") from err
        own = anchor_set.manifest.layout()
        held = [anchor.entry.name for anchor in anchor_set.anchors]
        if list(own.anchors) != held:
            raise ModelMismatchError(f"anchor set {name!r} holds anchors {held} but its manifest lists "
                                     f"{list(own.anchors)}")
        blocks[name] = range(len(anchors), len(anchors) + len(held))
        anchors += [f"{name}{SEPARATOR}{anchor}" for anchor in held]
        attributes.update({f"{name}{SEPARATOR}{attr}": (f"{name}{SEPARATOR}{low}", f"{name}{SEPARATOR}{high}")
                           for attr, (low, high) in own.attributes.items()})
        modules += [anchor.modules for anchor in anchor_set.anchors]
    layout = AnchorLayout(anchors=tuple(anchors), attributes=attributes)
    return inject(model, layout, modules, merge_cache_size=merge_cache_size, gather_active=gather_active,
                  blocks=blocks)


def set_row(imodel: InterpolatedModel, set_name: str, coeffs: Sequence[float]) -> tuple[float, ...]:
    """A row of the combined coefficient axis [K]: `coeffs` (the set's own anchor order) in the set's block, zero
    on every other set's anchors."""
    if set_name not in imodel.blocks:
        raise KeyError(f"no anchor set {set_name!r} in this model; it holds {sorted(imodel.blocks)}")
    block = imodel.blocks[set_name]
    if len(coeffs) != len(block):
        raise CoeffsShapeError(f"anchor set {set_name!r} has {len(block)} anchors, got {len(coeffs)} coefficients")
    row = [0.0] * imodel.num_anchors
    row[block.start : block.stop] = [float(c) for c in coeffs]
    return tuple(row)

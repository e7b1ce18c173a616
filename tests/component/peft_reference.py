"""PEFT's exact `cat` combination as the reference the interpolated model is checked against (tests only).

PEFT's add_weighted_adapter(..., combination_type="cat") builds lora_A = cat_k(w_k * scaling_k * A_k) and
lora_B = cat_k(B_k); the new adapter inherits the first adapter's scaling (and use_rslora), so it is forced to 1:
the weights already hold each anchor's scaling.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["cat_mix_logits", "peft_cat_logits"]


def cat_mix_logits(peft_model, names: Sequence[str], weights: Sequence[float], ids, mix_name: str = "mix"):
    """Logits of `ids` [N, T] under PEFT's `cat` mix of the loaded adapters `names` with `weights`."""
    from peft.tuners.lora import LoraLayer

    peft_model.add_weighted_adapter(list(names), list(weights), mix_name, combination_type="cat")
    for module in peft_model.modules():
        if isinstance(module, LoraLayer) and mix_name in module.scaling:
            module.scaling[mix_name] = 1.0
    peft_model.set_adapter(mix_name)
    with torch.no_grad():
        return peft_model.eval()(ids).logits


def peft_cat_logits(base, folders: Sequence[str | Path], weights: Sequence[float], ids):
    """PEFT's `cat` mix of the adapters in `folders` (PEFT format) on a copy of `base`, over the non-zero weights
    only (PEFT refuses an all-zero cat; a zero weight adds nothing), so any subset of anchors can be a row's mix."""
    from peft import PeftModel

    used = [(str(folder), float(w)) for folder, w in zip(folders, weights, strict=True) if w != 0]
    if not used:
        with torch.no_grad():
            return base(ids).logits
    aliases = [f"a{k}" for k in range(len(used))]  # PEFT adapter names cannot hold dots
    model = PeftModel.from_pretrained(copy.deepcopy(base), used[0][0], adapter_name=aliases[0])
    for (folder, _), alias in zip(used[1:], aliases[1:], strict=True):
        model.load_adapter(folder, adapter_name=alias)
    return cat_mix_logits(model, aliases, [w for _, w in used], ids)

"""The base model, its interpolation with the anchors, and the batching generation engine.

Names are imported on first use (PEP 562), so `import lerpray.model` stays light.
"""

from __future__ import annotations

import importlib

# Everything is imported on first use (PEP 562): the CLI loads its command modules, and `lerpray --help` must not
# pay for torch.
_LAZY = {
    **dict.fromkeys(
        ("BUNDLED_MODEL", "ModelLoadError", "ModelMismatchError", "bundled_model_dir", "check_model_fits",
         "load_base_model", "model_identity"),
        "lerpray.model.base",
    ),
    **dict.fromkeys(
        ("CoeffsNotSetError", "InterpolatedLinear", "InterpolatedModel", "interpolate"), "lerpray.model.interpolated"
    ),
    "Engine": "lerpray.model.engine",
    **dict.fromkeys(
        ("EngineError", "PromptTooLongError", "GenerationRequest", "GenerationResult", "ResolvedMix", "TokenEvent"),
        "lerpray.model.requests",
    ),
    "SamplingParams": "lerpray.model.sampling",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lerpray.model' has no attribute {name!r}")

"""The base model, its interpolation with the anchors, and the batching generation engine.

The engine's names are imported on first use (PEP 562), so `import lerpray.model` stays light and does not depend
on the engine module.
"""

from __future__ import annotations

import importlib

from lerpray.model.base import (
    BUNDLED_MODEL,
    ModelLoadError,
    ModelMismatchError,
    bundled_model_dir,
    check_compatible,
    load_base_model,
    model_identity,
)
from lerpray.model.interpolated import CoeffsNotSetError, InterpolatedLinear, InterpolatedModel, interpolate

_LAZY = {
    "Engine": "lerpray.model.engine",
    "EngineError": "lerpray.model.engine",
    "PromptTooLongError": "lerpray.model.engine",
    "GenerationRequest": "lerpray.model.engine",
    "GenerationResult": "lerpray.model.engine",
    "TokenEvent": "lerpray.model.engine",
    "SamplingParams": "lerpray.model.sampling",
}

__all__ = [
    "BUNDLED_MODEL",
    "CoeffsNotSetError",
    "InterpolatedLinear",
    "InterpolatedModel",
    "ModelLoadError",
    "ModelMismatchError",
    "bundled_model_dir",
    "check_compatible",
    "interpolate",
    "load_base_model",
    "model_identity",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lerpray.model' has no attribute {name!r}")

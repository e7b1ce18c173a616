"""Serving on Ray Serve: OpenAI-compatible HTTP over the continuous-batching engine.

`build_app` (the Serve import path `lerpray.serve.app:build_app`) and `ServeArgs` are the public surface; they
import Ray, so they load on first use and `import lerpray.serve` stays light.
"""

from __future__ import annotations

import importlib

__all__ = ["ServeArgs", "build_app", "make_app"]

_LAZY = {"ServeArgs": "lerpray.serve.config", "build_app": "lerpray.serve.app", "make_app": "lerpray.serve.app"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lerpray.serve' has no attribute {name!r}")

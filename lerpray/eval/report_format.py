"""Number and table formatting shared by the report sections (lerpray.eval.report, lerpray.eval.control)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["fmt", "markdown_table"]


def fmt(value: object) -> str:
    """Floats to 3 significant digits ("n/a" when not finite); anything else by str()."""
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(value) else f"{value:.3g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"

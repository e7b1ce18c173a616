"""Confound-matched poles: coarsened exact matching of two text pools on covariates other than the attribute.

Two poles that also differ in source, tone, length or reading grade teach their anchors those differences too, and
an anchor that learned them moves the other attributes' scores: entanglement that comes from the data, not from
interpolation. Matching bins every text's covariates into a cell and keeps, in every cell, as many texts of each
pole as the rarer pole has there, so the kept poles share one covariate distribution (up to the bins' width).

    cells = {text: (source, band(grade, GRADE_EDGES)) for ...}
    high, low = match_poles(high_cells, low_cells, seed=0)
"""

from __future__ import annotations

import bisect
import hashlib
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence

__all__ = ["COMPOUND_EDGES", "GRADE_EDGES", "VALENCE_EDGES", "WORDS_EDGES", "band", "match_poles", "seeded_order"]

VALENCE_EDGES = (-2.0, -0.5, 0.5, 2.0)  # mean human valence (-4..+4) of a VADER archive snippet
COMPOUND_EDGES = (-0.5, -0.05, 0.05, 0.5)  # VADER compound score (-1..1), for texts without human ratings
GRADE_EDGES = (4.0, 8.0, 12.0)  # Flesch-Kincaid grade
WORDS_EDGES = (10, 20)  # word count


def seeded_order(texts: Iterable[str], seed: int) -> list[str]:
    """Texts sorted by sha256(seed, text): a seeded shuffle that depends on neither input order nor hash seed."""
    return sorted(texts, key=lambda t: hashlib.sha256(f"{seed}\0{t}".encode()).digest())


def band(value: float, edges: Sequence[float]) -> int:
    """Index of the bin `value` falls in: 0 below edges[0], len(edges) at or above edges[-1]."""
    return bisect.bisect_right(edges, value)


def match_poles(
    high: Mapping[str, Hashable], low: Mapping[str, Hashable], *, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(high, low) texts kept by coarsened exact matching; each mapping is text -> its cell (a tuple of bins).

    In a cell holding h high and l low texts, min(h, l) of each are kept: the first in `seeded_order`.
    """
    pools: dict[Hashable, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for side, cells in enumerate((high, low)):
        for text, cell in cells.items():
            pools[cell][side].append(text)
    kept: tuple[list[str], list[str]] = ([], [])
    for cell in sorted(pools, key=repr):
        sides = pools[cell]
        n = min(len(sides[0]), len(sides[1]))
        for side, texts in enumerate(sides):
            kept[side].extend(seeded_order(texts, seed)[:n])
    return kept

"""Coarsened exact matching of two poles: equal counts per cell, deterministic, independent of input order."""

from __future__ import annotations

from collections import Counter

import pytest

from lerpray.data.matching import GRADE_EDGES, band, match_poles


@pytest.mark.unit
def test_band_edges_are_left_closed():
    assert [band(g, GRADE_EDGES) for g in (-1.0, 3.99, 4.0, 7.9, 8.0, 12.0, 30.0)] == [0, 0, 1, 1, 2, 3, 3]


@pytest.mark.unit
def test_every_cell_keeps_the_rarer_poles_count_of_each():
    high = {f"h{i}": ("tweets" if i < 30 else "nyt",) for i in range(40)}  # 30 tweets, 10 nyt
    low = {f"l{i}": ("tweets" if i < 5 else "nyt",) for i in range(25)}  # 5 tweets, 20 nyt
    low["only-low"] = ("movie",)  # a cell the other pole lacks is dropped
    kept_high, kept_low = match_poles(high, low)
    count = Counter(high[t] for t in kept_high)
    assert count == Counter(low[t] for t in kept_low) == {("tweets",): 5, ("nyt",): 10}
    assert set(kept_high) <= set(high) and set(kept_low) <= set(low)


@pytest.mark.unit
def test_choice_is_deterministic_order_independent_and_seeded():
    high = {f"h{i}": (i % 3,) for i in range(60)}
    low = {f"l{i}": (i % 2,) for i in range(20)}
    kept = match_poles(high, low, seed=0)
    assert match_poles(dict(reversed(high.items())), dict(reversed(low.items())), seed=0) == kept
    assert match_poles(high, low, seed=1) != kept
    assert (len(kept[0]), len(kept[1])) == (20, 20)

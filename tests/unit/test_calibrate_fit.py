"""lerpray.eval.calibrate's fits on synthetic sweep tables: the monotone curve and its band, and the cross slopes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lerpray.eval.calibrate import cross_slopes, fit_curve
from lerpray.targets import Curve

pytestmark = pytest.mark.unit


def sweep(attribute: str, alphas, prompts: int, score) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"attribute": attribute, "x": a, "prompt_id": p, "score.s": score(a) + rng.normal(0, 0.05),
             "score.t": -0.5 * a + rng.normal(0, 0.05)} for a in alphas for p in range(prompts) for _ in range(2)]  # fmt: skip
    return pd.DataFrame(rows)


def test_isotonic_curve_is_monotone_with_a_band_around_it():
    # a dip at 0.5 in the raw means: the fit pools it with its neighbour instead of going down
    table = sweep("a", [0.0, 0.25, 0.5, 0.75, 1.0], 12, lambda a: {0.5: 0.2}.get(a, a))
    c = fit_curve(table, "score.s", resamples=50)
    assert c["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0] and c["increasing"] is True
    assert all(b >= a for a, b in zip(c["fit"], c["fit"][1:], strict=False))
    assert c["n"] == [24] * 5
    assert all(lo <= f + 1e-9 and f <= hi + 1e-9 for lo, f, hi in zip(c["lo"], c["fit"], c["hi"], strict=True))
    Curve("s", tuple(c["alphas"]), tuple(c["fit"]))  # what the server loads accepts it


def test_decreasing_scorer_gets_a_decreasing_fit():
    c = fit_curve(sweep("a", [0.0, 0.5, 1.0], 8, lambda a: 1 - a), "score.s", resamples=20)
    assert c["increasing"] is False and c["fit"][0] > c["fit"][-1]


def test_cross_slopes_are_the_other_scorers_slope_over_the_hull():
    table = pd.concat([sweep("a", [0.0, 0.5, 1.0, 1.5], 6, lambda a: a)])
    slopes = cross_slopes(table, {"a": "score.s", "b": "score.t"})
    assert slopes == {"a": {"b": pytest.approx(-0.5, abs=0.05)}}  # alpha 1.5 (outside the hull) is not used

"""Sweep statistics against hand-computed values and known-truth simulations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lerpray.eval.statistics import (
    Z95,
    cluster_sums,
    monotone_verdict,
    point_stats,
    ratio_interval,
    step_stats,
    trend,
)


def _table(slope: float, *, prompts: int = 20, samples: int = 4, noise: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Scores = slope * alpha + a per-prompt offset + noise, at alpha 0, .25, .5, .75, 1."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0, 0.2, prompts)
    rows = [{"x": x, "prompt_id": p, "y": slope * x + offsets[p] + rng.normal(0, noise)}
            for x in (0.0, 0.25, 0.5, 0.75, 1.0) for p in range(prompts) for _ in range(samples)]  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.unit
def test_point_and_step_stats_by_hand():
    t = pd.DataFrame({"x": [0, 0, 0, 1, 1, 1], "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    points = point_stats(t["x"], t["y"])
    assert points["n"].tolist() == [3, 3] and points["mean"].tolist() == [2.0, 5.0]
    assert points["se"].tolist() == pytest.approx([1 / math.sqrt(3)] * 2)  # sd 1, n 3
    steps = step_stats(points)
    assert steps.loc[0, "diff"] == 3.0 and steps.loc[0, "se"] == pytest.approx(math.sqrt(2 / 3))
    assert steps.loc[0, "z"] == pytest.approx(3 / math.sqrt(2 / 3)) and bool(steps.loc[0, "resolved"])


@pytest.mark.unit
def test_point_stats_skip_nan_scores():
    t = pd.DataFrame({"x": [0, 0, 0], "y": [1.0, float("nan"), 3.0]})
    assert point_stats(t["x"], t["y"])["n"].tolist() == [2]


@pytest.mark.unit
def test_monotone_only_when_every_step_is_resolved():
    steps = pd.DataFrame({"diff": [0.3, 0.2, 0.1], "resolved": [True, True, True]})
    assert monotone_verdict(steps) == "monotone increasing"
    steps["resolved"] = [True, False, True]
    assert monotone_verdict(steps) == "monotone not established: 2 of 3 steps resolved"
    steps = pd.DataFrame({"diff": [0.3, -0.2], "resolved": [True, True]})
    assert monotone_verdict(steps).startswith("not monotone")
    assert monotone_verdict(pd.DataFrame({"diff": [-1.0], "resolved": [True]})) == "monotone decreasing"
    t = _table(0.4, noise=0.01)
    assert monotone_verdict(step_stats(point_stats(t["x"], t["y"]))) == "monotone increasing"


@pytest.mark.unit
def test_trend_slope_is_least_squares_and_its_interval_covers_the_truth():
    t = _table(0.4)
    sums = cluster_sums(t["x"], t["y"], t["prompt_id"])
    result = trend(sums, n_boot=500)
    assert result.unit == "prompt" and result.clusters == 20
    assert result.slope == pytest.approx(np.polyfit(t["x"], t["y"], 1)[0])
    assert result.low < 0.4 < result.high and result.high - result.low < 0.1
    covered = 0
    for seed in range(40):  # coverage of the 95 % interval, roughly
        t = _table(0.4, seed=seed + 1, noise=0.3, samples=2)
        r = trend(cluster_sums(t["x"], t["y"], t["prompt_id"]), n_boot=300, seed=seed)
        covered += r.low < 0.4 < r.high
    assert covered >= 33


@pytest.mark.unit
def test_few_prompts_fall_back_to_resampling_generations():
    t = _table(0.4, prompts=2)
    assert trend(cluster_sums(t["x"], t["y"], t["prompt_id"]), n_boot=200).unit == "generation"


@pytest.mark.unit
def test_ratio_interval_resamples_both_sweeps_together():
    own, cross = _table(0.5, seed=1), _table(0.25, seed=2)
    labels = sorted(set(own["prompt_id"]))
    own_s = cluster_sums(own["x"], own["y"], own["prompt_id"], clusters=labels)
    cross_s = cluster_sums(cross["x"], cross["y"], cross["prompt_id"], clusters=labels)
    ratio, low, high = ratio_interval(cross_s, own_s, n_boot=500)
    means = lambda t, x: t.loc[t["x"] == x, "y"].mean()  # noqa: E731
    expect = (means(cross, 1.0) - means(cross, 0.0)) / (means(own, 1.0) - means(own, 0.0))
    assert ratio == pytest.approx(expect) and low < ratio < high and low < 0.5 < high
    flat = _table(0.0, seed=3)
    _, low, high = ratio_interval(cluster_sums(flat["x"], flat["y"], flat["prompt_id"], clusters=labels), own_s)
    assert low < 0.0 < high
    with pytest.raises(ValueError, match="share their clusters"):
        ratio_interval(cluster_sums(flat["x"], flat["y"], flat["prompt_id"], clusters=labels[:5]), own_s)


@pytest.mark.unit
def test_z95():
    assert Z95 == pytest.approx(1.96, abs=1e-3)

"""Report sections with uncertainty (lerpray.eval.control) on a synthetic sweep with known effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lerpray.eval.control import (
    agreement_section,
    control_section,
    control_table,
    entanglement_intervals,
    scorer_agreement,
)

SCORERS = {"clf-sentiment.json": "sentiment", "textblob": "sentiment", "clf-humor.json": "humor"}


def _sweep(seed: int = 0, prompts: int = 12, samples: int = 3) -> pd.DataFrame:
    """Sentiment moves its classifier by +0.6 and textblob by +0.3 per alpha, humor's by -0.15 (ratio -0.25 of
    humor's own +0.6); humor's sweep moves nothing of sentiment. Extrapolated points must be ignored."""
    rng = np.random.default_rng(seed)
    rows = []
    for attr in ("sentiment", "humor"):
        for x in (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0):
            for p in range(prompts):
                for _ in range(samples):
                    s = x if attr == "sentiment" else 0.0
                    h = x if attr == "humor" else -0.25 * x
                    rows.append({"grid": "alpha", "attribute": attr, "x": x, "prompt_id": p,
                                 "score.clf-sentiment.json": 0.6 * s + rng.normal(0, 0.05),
                                 "score.textblob": 0.3 * s + rng.normal(0, 0.05),
                                 "score.clf-humor.json": 0.6 * h + rng.normal(0, 0.05)})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.unit
def test_control_table_lists_every_scorer_of_the_attribute_with_its_origin():
    control = control_table(_sweep(), SCORERS).set_index(["attribute", "scorer"])
    assert set(control.index) == {("sentiment", "clf-sentiment.json"), ("sentiment", "textblob"),
                                  ("humor", "clf-humor.json")}  # fmt: skip
    clf, blob = control.loc[("sentiment", "clf-sentiment.json")], control.loc[("sentiment", "textblob")]
    assert (clf["origin"], blob["origin"]) == ("corpus", "independent")
    assert clf["n"] == "36/36/36/36/36"  # alpha 0 .. 1; the extrapolated -0.5 is left out
    assert clf["verdict"] == "monotone increasing" and clf["steps"].count("*") == 4
    assert clf["slope_low"] < 0.6 < clf["slope_high"] and clf["boot_unit"] == "prompt"
    assert clf["delta"] == pytest.approx(0.6, abs=0.05) and clf["z"] > 20
    text = control_section(control.reset_index())
    assert "monotone increasing" in text and "No independent scorer for: humor" in text


@pytest.mark.unit
def test_unresolved_steps_are_not_called_monotone():
    table = _sweep(prompts=3, samples=1)
    table["score.textblob"] = 0.01 * table["x"] + np.random.default_rng(1).normal(0, 0.3, len(table))
    row = control_table(table, SCORERS).set_index("scorer").loc["textblob"]
    assert not row["verdict"].startswith("monotone ") or row["verdict"].startswith("monotone not established")
    assert row["boot_unit"] == "generation"  # 3 prompts: too few clusters to resample


@pytest.mark.unit
def test_entanglement_intervals_cover_the_true_ratio():
    ci = entanglement_intervals(_sweep(), SCORERS).set_index(["swept", "scorer"])
    cross = ci.loc[("sentiment", "clf-humor.json")]
    assert cross["ratio"] == pytest.approx(-0.25, abs=0.05) and cross["low"] < -0.25 < cross["high"]
    assert ci.loc[("humor", "clf-humor.json"), "ratio"] == pytest.approx(1.0)
    quiet = ci.loc[("humor", "textblob")]
    assert abs(quiet["ratio"]) < 0.1 and quiet["low"] < quiet["ratio"] < quiet["high"]


@pytest.mark.unit
def test_agreement_compares_scorers_of_one_attribute_on_generations():
    agreement = scorer_agreement(_sweep(), SCORERS)
    (row,) = agreement.to_dict("records")
    assert (row["a"], row["b"], row["b_origin"]) == ("clf-sentiment.json", "textblob", "independent")
    assert row["spearman"] > 0.8 and row["n"] == 5 * 12 * 3
    assert "clf-sentiment.json (corpus)" in agreement_section(agreement)

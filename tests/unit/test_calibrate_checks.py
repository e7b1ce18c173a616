"""A calibration is refused when its replies are mostly empty or its curve is flat within its own noise; the
per-prompt change from alpha 0 cancels each prompt's baseline; the shipped prompt set and its splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lerpray.eval.calibration_checks import CalibrationRefused, check_replies, check_signal, prompt_change
from lerpray.eval.config import SweepConfigError
from lerpray.eval.prompt_sets import OPENINGS, load_prompt_set

pytestmark = pytest.mark.unit

ALPHAS = np.array([0.0, 0.5, 1.0])


def table(change_at_1: float, prompts: int = 20, noise: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Prompt p's score at alpha a: its own baseline (spread widely) + change_at_1 * a + noise; 2 samples each."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(-0.5, 0.5, prompts)
    rows = [{"x": a, "prompt_id": p, "text": "some reply", "score.s": base[p] + change_at_1 * a + rng.normal(0, noise)}
            for a in ALPHAS for p in range(prompts) for _ in range(2)]  # fmt: skip
    return pd.DataFrame(rows)


def test_per_prompt_change_cancels_the_prompts_baselines_exactly():
    # without noise every prompt moves by exactly 0.3 per unit alpha, whatever its baseline
    rows = table(0.3, noise=0.0)
    change, band, draws = prompt_change(rows, "score.s", ALPHAS, resamples=50, seed=0)
    assert change == pytest.approx([0.0, 0.15, 0.3])
    assert band[0] == pytest.approx(band[1]) and draws == pytest.approx(np.full(50, 0.3))


def test_a_prompt_missing_an_alpha_is_left_out_of_the_change():
    rows = table(0.3, prompts=3, noise=0.0)
    rows = rows[~((rows["prompt_id"] == 2) & (rows["x"] == 1.0))]
    rows.loc[rows["prompt_id"] == 2, "score.s"] += 10.0  # would move the mean change if it were used
    change, _, _ = prompt_change(rows, "score.s", ALPHAS, resamples=10, seed=0)
    assert change == pytest.approx([0.0, 0.15, 0.3])


def test_a_clear_change_passes_with_its_standard_error():
    _, _, draws = prompt_change(table(0.3), "score.s", ALPHAS, resamples=200, seed=0)
    signal = check_signal(0.3, draws, "sentiment", "s", 20, min_z=2.0, hint="")
    assert signal["z"] > 10 and 0 < signal["se"] < 0.05 and signal["change"] == 0.3


def test_a_flat_curve_is_refused_saying_why_and_what_to_change():
    rows = table(0.0, noise=0.2)
    change, _, draws = prompt_change(rows, "score.s", ALPHAS, resamples=200, seed=0)
    with pytest.raises(CalibrationRefused, match=r"within 2 standard errors .* flat within its own noise") as err:
        check_signal(float(change[-1]), draws, "sentiment", "s", 20, min_z=2.0, hint="HINT")
    assert "more prompts and --samples" in str(err.value) and str(err.value).endswith("HINT")
    assert isinstance(err.value, ValueError)  # the CLI prints ValueErrors and exits 2


def test_a_constant_scorer_is_flat_not_infinitely_significant():
    with pytest.raises(CalibrationRefused, match="flat"):
        check_signal(0.0, np.zeros(100), "sentiment", "vader", 20, min_z=2.0, hint="")


def test_mostly_empty_replies_are_refused_and_a_few_are_counted():
    rows = table(0.3)
    rows.loc[rows.index[: len(rows) * 3 // 4], "text"] = ""  # what instructions sent as raw completions give
    with pytest.raises(CalibrationRefused, match=r"90 of 120 replies \(75%; 90 empty\).*--chat"):
        check_replies(rows, "score.s", "sentiment", max_unscorable=0.5, hint="")
    rows = table(0.3)
    rows.loc[rows.index[:12], "score.s"] = np.nan  # unscorable (e.g. FKGL of text without words)
    assert check_replies(rows, "score.s", "sentiment", max_unscorable=0.5, hint="") == pytest.approx(0.1)


def test_the_shipped_openings_cover_13_domains_in_both_halves():
    rows = [json.loads(line) for line in OPENINGS.read_text().splitlines()]
    assert len(rows) == 312 and len({r["text"] for r in rows}) == 312
    even, odd = load_prompt_set(split="even"), load_prompt_set(split="odd")
    assert len(even.texts) == len(odd.texts) == 156 and not set(even.texts) & set(odd.texts)
    assert even.provenance(chat=False)["domains"] == {d: 12 for d in set(odd.domains)} and len(set(odd.domains)) == 13
    assert even.licence.startswith("Apache-2.0") and even.source == "lerpray openings (shipped), even indices"
    lengths = [len(t.split()) for t in even.texts]
    assert min(lengths) <= 2 and max(lengths) >= 12  # several lengths: 1 to 17 words


def test_a_held_out_domain_and_user_files(tmp_path):
    travel = load_prompt_set(split="all", domains=["travel"])
    assert len(travel.texts) == 24 and set(travel.domains) == {"travel"}
    assert travel.provenance(chat=True)["chat"] is True
    ten = ["reviews", "places", "travel", "work", "home", "food", "nature", "school", "tech", "arts"]
    even, odd = load_prompt_set(split="even", domains=ten), load_prompt_set(split="odd", domains=ten)
    # halves by index in the file, then the domains: 12 of each domain in each half, never a prompt in both
    assert even.provenance(chat=False)["domains"] == dict.fromkeys(sorted(ten), 12)
    assert len(odd.texts) == 120 and not set(even.texts) & set(odd.texts)
    with pytest.raises(SweepConfigError, match=r"no prompts in domains \['weddings'\]"):
        load_prompt_set(domains=["weddings"])
    (tmp_path / "p.txt").write_text("one\n\ntwo\nthree\n")
    assert load_prompt_set(tmp_path / "p.txt", "odd").texts == ("two",)
    with pytest.raises(SweepConfigError, match="does not exist"):
        load_prompt_set(tmp_path / "missing.txt")


def test_calibration_alphas_must_include_0_and_1(tmp_path):
    from lerpray.eval.calibrate import calibrate

    with pytest.raises(ValueError, match=r"must include 0 and 1 .* got \[-0.5, 0.5, 1.5\]"):
        calibrate("unused", [], tmp_path, alphas=[-0.5, 0.5, 1.5])
    assert list(tmp_path.iterdir()) == []  # refused before anything is written

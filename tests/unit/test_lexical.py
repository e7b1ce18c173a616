"""Independent scorers: hand-computed values and the right direction on clear cases."""

from __future__ import annotations

import math

import pytest

from lerpray.eval.lexical import INDEPENDENT, coleman_liau, informal_markers
from lerpray.eval.scorers import get_scorer, scorer_origin


@pytest.mark.unit
def test_coleman_liau_by_hand():
    # 4 words, 16 letters, 1 sentence: L = 400, S = 25
    assert coleman_liau("Cats like warm milk.") == pytest.approx(0.0588 * 400 - 0.296 * 25 - 15.8)
    assert math.isnan(coleman_liau("... !!"))


@pytest.mark.unit
def test_informal_markers_count_each_family():
    markers, words = informal_markers("lol I can't believe @bob said THAT!! #wow :)")
    # lol and wow (chat words), I (pronoun), can't, @bob, #wow, :), !!, THAT (shouted)
    assert words == 8 and markers == 9
    assert informal_markers("The committee adopted the resolution without amendment.") == (0, 7)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("spec", "low_text", "high_text"),
    [
        (
            "coleman-liau",
            "The cat sat on the mat.",
            "Institutional considerations necessitate comprehensive reevaluation.",
        ),
        ("word-rarity", "I like to eat good food.", "Perspicacious epistemologists adjudicate ontological quandaries."),
        ("formality-markers", "omg u gotta see this lol!!", "The report outlines the proposed changes to policy."),
        ("textblob", "This is a terrible, awful film.", "This is a wonderful, delightful film."),
    ],
)
def test_independent_scorers_point_the_right_way(spec, low_text, high_text):
    scorer = get_scorer(spec)
    low, high = scorer.score([low_text, high_text])
    assert high > low
    assert scorer_origin(spec, scorer.attribute) == "independent"


@pytest.mark.unit
def test_origins():
    assert scorer_origin("fkgl", "simplicity") == "corpus"  # it defines the simplicity poles
    assert scorer_origin("embedding-humor", "humor") == "corpus"
    assert scorer_origin("textblob", "formality") == "corpus"  # independent only for what it measures
    assert "humor" not in INDEPENDENT.values()

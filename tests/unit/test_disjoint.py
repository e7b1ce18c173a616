"""One owner per source text: equality and containment after normalising, across poles and inside one."""

from __future__ import annotations

import pytest

from lerpray.data.disjoint import assign_disjoint, normalise, shared_texts

SNIPPET = "A moving, funny film. The acting is superb from start to finish."
SENTENCE = "the acting is SUPERB from start to finish!"  # cut from SNIPPET, case and punctuation changed


@pytest.mark.unit
def test_normalise_folds_case_punctuation_and_space():
    assert normalise("  It's GREAT!!\n") == "it s great"
    assert normalise("...") == ""


@pytest.mark.unit
def test_a_sentence_cut_from_a_snippet_is_the_same_text():
    assert shared_texts([SNIPPET], [SENTENCE]) == [(SNIPPET, SENTENCE)]
    assert shared_texts([SENTENCE], [SNIPPET]) == [(SENTENCE, SNIPPET)]
    assert shared_texts(["Great movie."], ["Great movie. Terrible popcorn though."]) == []  # < 5 words: only equal
    assert shared_texts(["Great movie!"], ["great movie"]) == [("Great movie!", "great movie")]
    assert shared_texts(["the acting is superb from start"], ["theacting is superb from start to"]) == []


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(6))
def test_every_group_goes_to_one_pole_only(seed):
    poles = {
        "sentiment.positive": [SNIPPET, "I loved every minute of this wonderful film.", "ok"],
        "simplicity.simple": [SENTENCE, "The cat sat on the warm mat all day."],
        "formality.informal": ["i loved every minute of this wonderful film", "lol this is so good omg wow"],
    }
    kept = assign_disjoint(poles, seed=seed)
    assert set(kept) == set(poles)
    names = list(kept)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert shared_texts(kept[names[a]], kept[names[b]]) == []
    assert ("ok" in kept["sentiment.positive"]) and "The cat sat on the warm mat all day." in kept["simplicity.simple"]
    owners = [name for name, texts in kept.items() if SNIPPET in texts or SENTENCE in texts]
    assert len(owners) == 1  # the snippet and its sentence are one text: one pole keeps it
    assert assign_disjoint(poles, seed=seed) == kept  # deterministic


@pytest.mark.unit
def test_inside_a_pole_equal_and_contained_texts_collapse():
    texts = ["Yay. Another good phone interview.", "YAY! another good phone interview!", SNIPPET, SENTENCE]
    assert assign_disjoint({"p": texts}) == {"p": ["Yay. Another good phone interview.", SNIPPET]}


@pytest.mark.unit
def test_ownership_is_spread_over_claimants():
    """Owners come from a seeded hash, not from the order attributes are listed: both claimants win some."""
    shared = [f"shared text number {i} with enough words" for i in range(200)]
    kept = assign_disjoint({"a": shared, "b": list(shared)}, seed=0)
    assert len(kept["a"]) + len(kept["b"]) == 200 and 60 < len(kept["a"]) < 140

"""Attribute scorers: ordering on obvious cases, the FKGL formula, classifier fit / save / load."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from lerpray.data.features import count_syllables, flesch_kincaid_grade
from lerpray.eval.scorers import (
    EmbeddingClassifier,
    FleschKincaidGrade,
    ScorerError,
    TextBlobPolarity,
    VaderSentiment,
    get_scorer,
)

POSITIVE = "I absolutely love this wonderful movie, it is a joyful delight!"
NEGATIVE = "This is a horrible, awful film and I hate every boring minute of it."
SIMPLE = "The cat sat on the mat. It was a good day."
COMPLEX = (
    "Notwithstanding considerable institutional opposition, the administration implemented comprehensive "
    "regulatory modifications affecting international telecommunications infrastructure."
)


@pytest.mark.unit
def test_vader_orders_positive_above_negative():
    pos, neg = VaderSentiment().score([POSITIVE, NEGATIVE])
    assert pos > 0.5 and neg < -0.5


@pytest.mark.unit
def test_textblob_orders_positive_above_negative():
    pos, neg = TextBlobPolarity().score([POSITIVE, NEGATIVE])
    assert pos > 0 > neg


@pytest.mark.unit
@pytest.mark.parametrize(
    ("word", "syllables"),
    [("cat", 1), ("the", 1), ("table", 2), ("people", 2), ("wanted", 2), ("jumped", 1), ("boxes", 2), ("makes", 1), ("readability", 5),
     ("yesterday", 3), ("Unbelievably", 5)],
)  # fmt: skip
def test_count_syllables_on_common_words(word, syllables):
    assert count_syllables(word) == syllables


@pytest.mark.unit
def test_fkgl_matches_the_formula_by_hand():
    # 6 words, 1 sentence, 6 syllables: 0.39 * 6 + 11.8 * 1 - 15.59
    assert flesch_kincaid_grade("The cat sat on the mat.") == pytest.approx(0.39 * 6 + 11.8 - 15.59)
    # 11 words in 2 sentences, 13 syllables (every word 1 except "yesterday" 3)
    text = "The dog ran to the park. It was there yesterday too."
    assert flesch_kincaid_grade(text) == pytest.approx(0.39 * 11 / 2 + 11.8 * 13 / 11 - 15.59)


@pytest.mark.unit
def test_fkgl_orders_simple_below_complex_and_is_nan_without_words():
    simple, complex_, empty = FleschKincaidGrade().score([SIMPLE, COMPLEX, "  ... 42 !"])
    assert simple < 4 and complex_ > 12
    assert math.isnan(empty)


def _hash_encoder(texts: list[str]) -> np.ndarray:
    """Bag of hashed words, 64 dims, unit length: a deterministic stand-in for sentence embeddings."""
    out = np.zeros((len(texts), 64))  # [N, 64]
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _two_poles(n: int = 24) -> tuple[list[str], list[str]]:
    foods = ["soup", "bread", "pasta", "curry", "salad", "cake", "stew", "pie"]
    stars = ["comet", "galaxy", "nebula", "planet", "quasar", "orbit", "rocket", "moon"]
    high = [f"we cooked a {foods[i % 8]} with garlic and butter in the kitchen {i}" for i in range(n)]
    low = [f"the telescope tracked a {stars[i % 8]} across the dark sky tonight {i}" for i in range(n)]
    return high, low


@pytest.mark.unit
def test_embedding_classifier_fit_save_load_roundtrip(tmp_path):
    high, low = _two_poles()
    clf = EmbeddingClassifier("topic", "food", "space", encoder=_hash_encoder)
    metrics = clf.fit(high, low, seed=1)
    assert metrics["heldout_accuracy"] == 1.0 and metrics["n_heldout"] > 0
    probe = ["a warm pie with butter", "a rocket passed the moon"]
    scores = clf.score(probe)
    assert scores[0] > 0.5 > scores[1]

    clf.save(tmp_path / "clf.json")
    saved = json.loads((tmp_path / "clf.json").read_text())
    assert saved["high_pole"] == "food" and len(saved["coef"]) == 64
    loaded = EmbeddingClassifier.load(tmp_path / "clf.json", encoder=_hash_encoder)
    assert loaded.score(probe) == pytest.approx(scores)
    assert loaded.metrics == metrics


@pytest.mark.unit
def test_embedding_classifier_errors_say_what_to_do(tmp_path):
    clf = EmbeddingClassifier("topic", "food", "space", encoder=_hash_encoder)
    with pytest.raises(ScorerError, match="not fitted"):
        clf.score(["anything"])
    with pytest.raises(ScorerError, match=">= 2 texts per pole"):
        clf.fit(["one"], ["two", "three"])
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ScorerError, match="not a lerpray-embedding-classifier"):
        EmbeddingClassifier.load(tmp_path / "other.json")


@pytest.mark.unit
def test_get_scorer_by_name_and_unknown_name():
    assert get_scorer("fkgl").attribute == "simplicity"
    assert get_scorer("vader").high_pole == "positive"
    with pytest.raises(ScorerError, match="unknown scorer"):
        get_scorer("bleu")


@pytest.mark.component
def test_minilm_classifier_separates_two_synthetic_poles():
    high, low = _two_poles(12)
    clf = EmbeddingClassifier("topic", "food", "space")  # real all-MiniLM-L6-v2 from its PyPI wheel
    metrics = clf.fit(high, low)
    assert metrics["heldout_accuracy"] == 1.0
    food, space = clf.score(["Grandma baked fresh bread this morning.", "Astronomers spotted a distant galaxy."])
    assert food > 0.5 > space

"""Entanglement in the data: every classifier's difference between each attribute's two poles."""

from __future__ import annotations

import pytest


class _KeywordScorer:
    """1.0 for a text containing the keyword, else 0.0: a scorer whose pole means are known exactly."""

    def __init__(self, keyword: str) -> None:
        self.keyword = keyword

    def score(self, texts: list[str]) -> list[float]:
        return [float(self.keyword in t) for t in texts]


@pytest.mark.unit
def test_pole_entanglement_measures_what_one_attributes_poles_differ_in_for_another(tmp_path):
    from lerpray.data.corpora import build_corpora, load_manifest
    from lerpray.eval.pole_scores import pole_entanglement, pole_means

    poles = {  # every positive text is upbeat, every formal text is long; 2 of 4 positive texts are also long
        "pos": ["great day", "great long day", "great fun", "great long fun"],
        "neg": ["bad day", "bad fun", "bad one", "bad two"],
        "formal": ["long a", "long b", "long c", "long d"],
        "informal": ["great a", "b", "c", "d"],
    }
    for name, texts in poles.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(texts))
    (tmp_path / "poles.yaml").write_text(
        "attributes:\n"
        "  sentiment: {high: {name: pos, path: pos.txt}, low: {name: neg, path: neg.txt}}\n"
        "  formality: {high: {name: formal, path: formal.txt}, low: {name: informal, path: informal.txt}}\n"
    )
    build_corpora(tmp_path / "c", config=tmp_path / "poles.yaml", heldout_fraction=0.0)
    attributes = load_manifest(tmp_path / "c").attributes
    scorers = {"sentiment": _KeywordScorer("great"), "formality": _KeywordScorer("long")}
    means = pole_means(tmp_path / "c", scorers, attributes, split="train")
    assert means["sentiment.pos"] == {"sentiment": 1.0, "formality": 0.5}
    matrix = pole_entanglement(means, attributes)
    assert matrix["sentiment"] == {"sentiment": 1.0, "formality": 0.5}  # (0.5 - 0) / (1 - 0)
    assert matrix["formality"] == {"sentiment": -0.25, "formality": 1.0}  # (0 - 0.25) / (1 - 0)

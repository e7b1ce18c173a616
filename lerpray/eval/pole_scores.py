"""Entanglement already in the data, before any training: every attribute's classifier scores every pole's texts.

When sweeping attribute i moves attribute j's score, the first suspect is the data: do i's two poles already differ
in j's eyes? `pole_entanglement` answers from text alone, normalised like the sweep's entanglement matrix: the
difference of scorer j between i's high and low pole, divided by the difference of i's own scorer.

    means = pole_means("data/corpora", {"sentiment": clf_s, "formality": clf_f}, split="train")
    matrix = pole_entanglement(means, load_manifest("data/corpora").attributes)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lerpray.data.corpora import PolePair, read_pole
from lerpray.eval.scorers import Scorer

__all__ = ["pole_entanglement", "pole_means"]


def pole_means(
    corpora_dir: str | Path,
    scorers: Mapping[str, Scorer],
    attributes: Mapping[str, PolePair],
    *,
    split: str = "train",
    max_texts: int = 200,
) -> dict[str, dict[str, float]]:
    """anchor ("attribute.pole") -> scorer's attribute -> mean score over the pole's first `max_texts` texts.

    The split's texts are already in a seeded hash order, so the first ones are a fair sample.
    """
    means = {}
    for attribute, pair in attributes.items():
        for pole in (pair.high, pair.low):
            texts = read_pole(corpora_dir, f"{attribute}.{pole}", split)[:max_texts]
            # one list for every scorer: the embedding encoder reuses its last encoding
            means[f"{attribute}.{pole}"] = {j: _mean(s.score(texts)) for j, s in scorers.items()}
    return means


def pole_entanglement(
    means: Mapping[str, Mapping[str, float]], attributes: Mapping[str, PolePair]
) -> dict[str, dict[str, float]]:
    """swept attribute i -> scorer j -> (j(high_i) - j(low_i)) / (i(high_i) - i(low_i)); the diagonal is 1.

    Rows are the attributes whose own scorer is among the scored ones; NaN where that own difference is 0.
    """
    matrix = {}
    for i, pair in attributes.items():
        high, low = means[f"{i}.{pair.high}"], means[f"{i}.{pair.low}"]
        if i not in high:
            continue
        own = high[i] - low[i]
        matrix[i] = {j: (high[j] - low[j]) / own if own else float("nan") for j in high}
    return matrix


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")

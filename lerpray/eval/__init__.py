"""Evaluation of anchor sets: attribute scorers, sweeps of mixes with their statistics, plots and report, the
weight-space cosine of the anchors' updates, and classifiers fitted on pole corpora (built by lerpray.data).

Heavy dependencies (vaderSentiment, textblob, scikit-learn, sentence-transformers, matplotlib) load inside the
functions that need them, so importing this package is cheap.
"""

from lerpray.eval.scorers import (
    EmbeddingClassifier,
    FleschKincaidGrade,
    Scorer,
    ScorerError,
    TextBlobPolarity,
    VaderSentiment,
    get_scorer,
)

__all__ = [
    "EmbeddingClassifier",
    "FleschKincaidGrade",
    "Scorer",
    "ScorerError",
    "TextBlobPolarity",
    "VaderSentiment",
    "get_scorer",
]

"""Evaluation: attribute-pole corpora built from registry packages, and attribute scorers.

Heavy dependencies (vaderSentiment, textblob, scikit-learn, sentence-transformers) load inside the scorers that
need them, so importing this package is cheap.
"""

from lerpray.eval.corpora import (
    BUILTIN_POLES,
    CorporaManifest,
    CorpusError,
    UserCorporaConfig,
    build_corpora,
    load_manifest,
    load_user_config,
    read_pole,
    read_texts,
)
from lerpray.eval.scorers import (
    EmbeddingClassifier,
    FleschKincaidGrade,
    Scorer,
    ScorerError,
    TextBlobPolarity,
    VaderSentiment,
    flesch_kincaid_grade,
    get_scorer,
)

__all__ = [
    "BUILTIN_POLES",
    "CorporaManifest",
    "CorpusError",
    "EmbeddingClassifier",
    "FleschKincaidGrade",
    "Scorer",
    "ScorerError",
    "TextBlobPolarity",
    "UserCorporaConfig",
    "VaderSentiment",
    "build_corpora",
    "flesch_kincaid_grade",
    "get_scorer",
    "load_manifest",
    "load_user_config",
    "read_pole",
    "read_texts",
]

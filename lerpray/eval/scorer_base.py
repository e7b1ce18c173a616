"""The scorer interface every scorer implements (lerpray.eval.scorers, lerpray.eval.lexical) and its error."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Scorer", "ScorerError", "TextFeatureScorer"]


class ScorerError(ValueError):
    """A scorer could not be built, fitted or loaded; the message says what to change."""


class Scorer:
    """Common interface: `score(texts)` returns one float per text; higher means more `high_pole`."""

    name: str = "scorer"
    attribute: str = ""
    high_pole: str = ""

    def score(self, texts: list[str]) -> list[float]:
        raise NotImplementedError


class TextFeatureScorer(Scorer):
    """A scorer that is one pure function of each text: set `feature = staticmethod(fn)` in the subclass."""

    feature: Callable[[str], float]

    def score(self, texts: list[str]) -> list[float]:
        return [self.feature(t) for t in texts]

"""Text features that the corpus builders match poles on and the scorers score with: pure functions of a text.

- `flesch_kincaid_grade`: the Flesch-Kincaid grade level, by formula with a documented syllable heuristic.
- `vader_compound`: VADER's compound sentiment in [-1, 1] (Hutto & Gilbert, ICWSM 2014; lexicon in the
  vaderSentiment wheel, loaded once).
"""

from __future__ import annotations

import functools
import re

__all__ = ["count_syllables", "flesch_kincaid_grade", "vader_analyzer", "vader_compound"]

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")
_SILENT_ENDING = re.compile(r"(?:[^laeiouysxzcgh]es|[^laeiouytd]ed|[^laeiouy]e)$")


def count_syllables(word: str) -> int:
    """Syllables of one English word by a vowel-group heuristic (no dictionary).

    Lower-case; words of <= 3 letters count 1; drop a silent ending after a consonant: "-e" (not after "l", so
    "table" keeps "-le"), "-es" (not after s, x, z, c, g, h: "makes" 1, "boxes" 2), "-ed" (not after t, d:
    "jumped" 1, "wanted" 2); drop a leading "y"; count runs of vowels (aeiouy); at least 1. Agrees with
    dictionaries on most common words ("readability" 5, "people" 2) and misses some ("create" 1, "played" 2).
    """
    w = word.lower()
    if len(w) <= 3:
        return 1
    w = _SILENT_ENDING.sub(lambda m: m.group(0)[0], w)
    w = w[1:] if w.startswith("y") else w
    return max(1, len(_VOWEL_GROUP.findall(w)))


def flesch_kincaid_grade(text: str) -> float:
    """Flesch-Kincaid grade level: 0.39 * words/sentences + 11.8 * syllables/words - 15.59 (Kincaid et al. 1975).

    Words are runs of letters (apostrophes inside allowed); sentences end at ., ! or ? followed by space or the
    end (a text without one is one sentence). Returns NaN for a text with no words.
    """
    words = _WORD.findall(text)
    if not words:
        return float("nan")
    sentences = max(1, sum(1 for part in _SENTENCE_END.split(text) if _WORD.search(part)))
    syllables = sum(count_syllables(w) for w in words)
    return 0.39 * len(words) / sentences + 11.8 * syllables / len(words) - 15.59


@functools.lru_cache(maxsize=1)
def vader_analyzer():
    """VADER's SentimentIntensityAnalyzer, built once (reading its lexicon takes a moment)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_compound(texts: list[str]) -> list[float]:
    """VADER's compound score of each text, in [-1, 1]; higher is more positive."""
    analyzer = vader_analyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]

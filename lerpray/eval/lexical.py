"""Scorers independent of the built-in corpora: neither fitted on them nor used to build or match them.

The corpus classifiers (fitted on each attribute's own poles) and Flesch-Kincaid (which defines the simplicity
poles) measure "looks like the training data". These measure the attribute another way, from resources that were
never fitted on lerpray's corpora:

- `ColemanLiau` (simplicity; higher = complex): the Coleman-Liau index, 0.0588 L - 0.296 S - 15.8 with L letters
  and S sentences per 100 words (Coleman & Liau 1975). Counts letters, not syllables; still a length formula, so it
  correlates with Flesch-Kincaid by construction. Use it beside `WordRarity`, not alone.
- `WordRarity` (simplicity; higher = complex): mean of 8 - Zipf frequency over a text's words, from the `wordfreq`
  package's English lists (data in the wheel; Speer et al.). Rare words, not long sentences: a different signal.
- `FormalityMarkers` (formality; higher = formal): 1 - (informal markers per word), markers being contractions,
  first- and second-person pronouns (deixis, Heylighen & Dewaele 2002), a fixed list of chat words and interjections,
  @mentions, #hashtags, URLs, emoticons, repeated !/?, shouted (all-caps) words and a lower-case "i"; the feature
  families of Pavlick & Tetreault (2016). A fixed rule set, not fitted; but the informal pole is tweets, and
  @mentions, hashtags and URLs are tweet markers: read it as "formal register", with that overlap in mind.
- Sentiment: `TextBlobPolarity` (Pattern's lexicon) and `VaderSentiment` (lerpray.eval.scorers). The sentiment
  poles are cut by the archive's *human* ratings, not by VADER; VADER's lexicon was not fitted on them (its
  authors collected those ratings to evaluate it). VADER's tone was used to match humor's and simplicity's poles,
  which does not touch sentiment's.
- Humor: no scorer independent of the corpora was found offline (no humor lexicon or model ships in a package
  registry checked here); humor is measured by its corpus classifier only, and reports say so.
"""

from __future__ import annotations

import functools
import re

from lerpray.eval.scorer_base import Scorer, ScorerError, TextFeatureScorer

__all__ = ["INDEPENDENT", "ColemanLiau", "FormalityMarkers", "WordRarity", "coleman_liau", "informal_markers"]

# scorer name -> attribute it measures independently of that attribute's built-in corpora
INDEPENDENT = {"vader": "sentiment", "textblob": "sentiment", "coleman-liau": "simplicity", "word-rarity": "simplicity",
               "formality-markers": "formality"}  # fmt: skip

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def coleman_liau(text: str) -> float:
    """Coleman-Liau index: 0.0588 * letters/100 words - 0.296 * sentences/100 words - 15.8; NaN without words."""
    words = _WORD.findall(text)
    if not words:
        return float("nan")
    letters = sum(c.isalpha() for w in words for c in w)
    sentences = max(1, sum(1 for part in _SENTENCE_END.split(text) if _WORD.search(part)))
    return 0.0588 * 100 * letters / len(words) - 0.296 * 100 * sentences / len(words) - 15.8


class ColemanLiau(TextFeatureScorer):
    name, attribute, high_pole = "coleman-liau", "simplicity", "complex"
    feature = staticmethod(coleman_liau)


@functools.lru_cache(maxsize=1)
def _zipf():
    try:
        from wordfreq import zipf_frequency
    except ImportError as exc:
        raise ScorerError("WordRarity needs wordfreq (its word lists ship in the wheel): pip install wordfreq") from exc
    return functools.lru_cache(maxsize=200_000)(lambda w: zipf_frequency(w, "en"))


class WordRarity(Scorer):
    """Mean of 8 - Zipf frequency (0 = as common as "the", ~8 = unseen) over a text's words; NaN without words."""

    name = "word-rarity"
    attribute = "simplicity"
    high_pole = "complex"

    def __init__(self) -> None:
        self._zipf = _zipf()

    def score(self, texts: list[str]) -> list[float]:
        out = []
        for text in texts:
            words = [w.lower() for w in _WORD.findall(text)]
            out.append(sum(8.0 - self._zipf(w) for w in words) / len(words) if words else float("nan"))
        return out


_CHAT = frozenset(
    "lol lmao omg wtf btw idk imo tbh gonna wanna gotta kinda sorta dunno ya yeah yep nope yay wow haha hahaha hehe "
    "hey hi ok okay u ur cuz cos coz thx pls plz awesome cool stuff guys dude ugh oops yo nah".split()
)
_PERSONAL = frozenset("i me my mine myself you your yours yourself we us our ours".split())
_CONTRACTION = re.compile(r"[A-Za-z]+'(?:t|m|re|ll|ve|d|s)\b", re.I)
_SYMBOLS = re.compile(r"@\w+|#\w+|https?://\S+|www\.\S+|[:;]-?[()DPp]|[!?]{2,}")


def informal_markers(text: str) -> tuple[int, int]:
    """(informal markers, words) of a text; see the module docstring for what counts as a marker."""
    words = _WORD.findall(text)
    lower = [w.lower() for w in words]
    count = sum(w in _CHAT or w in _PERSONAL for w in lower)
    count += len(_CONTRACTION.findall(text)) + len(_SYMBOLS.findall(text))
    count += sum(len(w) > 1 and w.isupper() for w in words) + sum(w == "i" for w in words)
    return count, len(words)


class FormalityMarkers(Scorer):
    """1 - informal markers per word, floored at 0; NaN for a text without words."""

    name = "formality-markers"
    attribute = "formality"
    high_pole = "formal"

    def score(self, texts: list[str]) -> list[float]:
        out = []
        for text in texts:
            markers, words = informal_markers(text)
            out.append(max(0.0, 1.0 - markers / words) if words else float("nan"))
        return out

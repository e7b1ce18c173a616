"""A calibration's partial-reply model: replies cut after k tokens, scored, fitted (lerpray.eval.calibration_partial),
stored in the curve by calibration_document and read back into the Calibration the request path uses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lerpray.anchors.calibration import calibration_of, format_calibration
from lerpray.configs import SamplingSettings
from lerpray.eval.calibrate import calibration_document
from lerpray.eval.calibration_partial import partial_model
from lerpray.eval.scorer_base import Scorer
from lerpray.reply_model import PartialModel

pytestmark = pytest.mark.unit


class Share(Scorer):
    """The share of "good" words minus the share of "bad" words of a text (0 for an empty one)."""

    name, attribute, high_pole = "share", "sentiment", "positive"

    def score(self, texts: list[str]) -> list[float]:
        words = [t.split() for t in texts]
        return [(w.count("good") - w.count("bad")) / len(w) if w else 0.0 for w in words]


def words(text: str, tokens) -> list[str]:  # a tokenizer whose tokens are words
    return [" ".join(text.split()[:k]) for k in tokens]


def sweep(prompts: int = 40, seed: int = 0) -> pd.DataFrame:
    """8-word replies: the first 4 words carry the prompt's tone (good or bad, fixed per prompt), the last 4 are
    "good" with probability alpha."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(prompts):
        tone = "good" if p % 2 else "bad"
        for a in (0.0, 0.5, 1.0):
            for s in range(3):
                late = ["good" if rng.random() < a else "plain" for _ in range(4)]
                text = " ".join([tone, "plain", "plain", "plain", *late])
                rows.append({"attribute": "sentiment", "x": a, "prompt_id": p, "sample": s, "text": text})
    table = pd.DataFrame(rows)
    table["score.share"] = Share().score(list(table["text"]))
    return table


def test_the_first_tokens_carry_the_prompts_tone_and_alpha_acts_later():
    model = PartialModel.from_report(partial_model(sweep(), "score.share", Share(), words, max_tokens=8))
    assert model.tokens == (1, 2, 3, 4, 6)  # checkpoints below max_tokens
    k1 = model.at(1)
    assert k1[1] == pytest.approx(0.0, abs=1e-6)  # alpha does not move the first word
    assert k1[2] == pytest.approx(1 / 8, abs=0.01)  # first word +-1, whole reply +-1/8 from it: carry 1/8
    assert k1[3] == pytest.approx(1.0)  # all of alpha's effect is ahead
    k6 = model.at(6)
    assert 0 < k6[1] and k6[3] < 1.0  # by 6 words alpha has shown, part of its effect is written


def test_calibration_document_stores_the_model_and_the_calibration_reads_it():
    doc = calibration_document(sweep(), [("share", Share())], {"count": 40}, SamplingSettings(max_tokens=8),
                               resamples=20, prefixes=words)  # fmt: skip
    assert set(doc["curves"]["sentiment"]["partial"]) == {"tokens", "intercept", "slope", "carry", "ahead"}
    assert calibration_of(doc).partial["sentiment"].tokens == (1, 2, 3, 4, 6)
    shown = format_calibration({**doc, "anchor_set": {"version": 1}})  # `lerpray anchors inspect`
    assert "partial-reply model after 1, 2, 3, 4, 6 tokens (feedback runs the predictive loop)" in shown
    assert "max_tokens 8, min_tokens 0 (targets' default)" in shown
    assert calibration_of(doc).sampling == {"temperature": 0.7, "max_tokens": 8, "min_tokens": 0}
    plain = calibration_document(sweep(), [("share", Share())], {"count": 40}, SamplingSettings(max_tokens=8),
                                 resamples=20)  # fmt: skip
    assert "partial" not in plain["curves"]["sentiment"] and calibration_of(plain).partial == {}

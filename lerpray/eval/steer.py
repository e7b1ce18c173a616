"""The closed loop's scorers: a request's Feedback -> the engine's steer hook (lerpray.feedback.Steerer).

The serve deployment and the batch pipeline call `steerer` once per engine request (each request, and each of its
choices inside the Steerer, keeps its own loop state). Scorers are built once per process and shared: the
mid-reply ones (lerpray.feedback.MID_REPLY_SCORERS) are lexicons and formulas without per-text state.
"""

from __future__ import annotations

import functools

from lerpray.feedback import Feedback, Score, Steerer
from lerpray.mixing import AnchorLayout

__all__ = ["steerer"]


@functools.cache
def _score_function(name: str) -> Score:
    from lerpray.eval.scorers import get_scorer

    scorer = get_scorer(name)
    return lambda text: scorer.score([text])[0]


def steerer(feedback: Feedback, layout: AnchorLayout) -> Steerer:
    """A fresh Steerer for one engine request, scoring with the calibration's own scorers."""
    return Steerer(feedback, {a: _score_function(name) for a, name in feedback.scorers.items()}, layout)

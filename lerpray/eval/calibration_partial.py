"""A calibration's partial-reply model: how the first k tokens of its sweep's replies score (lerpray.reply_model).

Each reply of an attribute's sweep in the hull (alpha in [0, 1]) is cut after k generated tokens for a few
checkpoints k (re-tokenized with the base model's tokenizer), every cut is scored with the calibration's scorer,
and lerpray.reply_model.fit_partial turns (alpha, final score, partial scores) into the closed loop's model, stored
in the curve as "partial".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lerpray.reply_model import fit_partial

if TYPE_CHECKING:
    from lerpray.eval.scorer_base import Scorer

__all__ = ["CHECKPOINTS", "Prefixes", "partial_model", "tokenizer_prefixes"]

CHECKPOINTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
Prefixes = Callable[[str, Sequence[int]], list[str]]  # (reply, checkpoints) -> its first k tokens' text per k


def partial_model(rows: pd.DataFrame, column: str, scorer: Scorer, prefixes: Prefixes, max_tokens: int) -> dict:
    """rows: one attribute's sweep (`x`, `text`, the score `column`) -> the "partial" entry of its curve."""
    hull = rows[rows["x"].between(0.0, 1.0) & rows[column].notna()]
    tokens = [k for k in CHECKPOINTS if k < max_tokens] or [1]
    texts = [t if isinstance(t, str) else "" for t in hull["text"]]
    cuts = [cut for text in texts for cut in prefixes(text, tokens)]
    scores = np.asarray(scorer.score(cuts), dtype=float).reshape(len(texts), len(tokens))
    model = fit_partial(hull["x"].to_numpy(float), hull[column].to_numpy(float), scores, tokens)
    return model.report()


def tokenizer_prefixes(base_model: str | None) -> Prefixes:
    """Prefixes by the base model's tokenizer (a local folder, a hub id, or None / the bundled model), loaded at
    the first call (a calibration refused before its partial model never loads it)."""
    loaded: list = []

    def prefixes(text: str, tokens: Sequence[int]) -> list[str]:
        if not loaded:
            from transformers import AutoTokenizer

            from lerpray.hf_models import BUNDLED_MODEL, bundled_model_dir

            path = str(bundled_model_dir()) if base_model in (None, BUNDLED_MODEL) else base_model
            loaded.append(AutoTokenizer.from_pretrained(path))
        ids = loaded[0](text, add_special_tokens=False)["input_ids"]
        return [loaded[0].decode(ids[:k]) for k in tokens]

    return prefixes

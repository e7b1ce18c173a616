"""Perplexity of held-out text under the interpolated model, per mix (the paper's fluency measure).

Teacher forcing through the same InterpolatedModel the engine generates with: for one mix c, every text is scored
in batches with `set_coeffs(c repeated N times)`, and

    perplexity(c) = exp( sum over texts and positions t >= 1 of -log p_c(token_t | tokens_<t) / number of such tokens )

Texts are right padded, padding is masked out of the sum, and each text is cut to `max_length` tokens.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import pandas as pd

    from lerpray.eval.grid import GridPoint
    from lerpray.model.interpolated import InterpolatedModel

__all__ = ["PerplexityError", "encode_texts", "heldout_texts", "mix_nll", "perplexities", "sweep_perplexity"]


class PerplexityError(ValueError):
    """No usable held-out text; the message says what to give instead."""


def heldout_texts(*, texts: Path | None, corpora: Path | None, max_texts: int, seed: int = 0) -> list[str]:
    """Texts for perplexity: a file (.jsonl with "text" or one per line), or every pole's held-out split of a built
    corpora folder in equal shares (so no pole dominates). Sampled deterministically down to `max_texts`."""
    from lerpray.data.corpora import load_manifest, read_pole
    from lerpray.data.text_io import read_texts

    if texts is not None:
        pool = read_texts(texts, allow_empty=True)
    elif corpora is not None:
        poles = sorted(load_manifest(corpora).poles)
        share = max(1, max_texts // max(1, len(poles)))
        pool = [t for pole in poles for t in _sample(read_pole(corpora, pole, "heldout"), share, seed)]
    else:
        raise PerplexityError("give `texts` (a file) or `corpora` (a built corpora folder) for perplexity")
    if not pool:
        raise PerplexityError(f"no held-out texts found in {texts or corpora}")
    return _sample(pool, max_texts, seed)


def _sample(items: list[str], n: int, seed: int) -> list[str]:
    return items if len(items) <= n else random.Random(seed).sample(items, n)


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text (special tokens as the tokenizer adds them), cut to max_length; texts < 2 tokens dropped."""
    ids = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_length] for t in texts]
    return [row for row in ids if len(row) >= 2]


@torch.inference_mode()
def mix_nll(
    imodel: InterpolatedModel, encoded: Sequence[Sequence[int]], coeffs: Sequence[float], *, batch_size: int = 16
) -> tuple[float, int]:
    """(summed negative log-likelihood, number of predicted tokens) of `encoded` texts under one mix `coeffs` [K]."""
    device = next(imodel.model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)  # [N, T] right padded
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # [N, T] 1 = real token
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        ids, mask = ids.to(device), mask.to(device)
        imodel.set_coeffs(torch.tensor([list(coeffs)] * len(rows)))  # [N, K]: one mix for the whole batch
        logits = imodel(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # [N, T-1, V]
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # [N, T-1]
        keep = mask[:, 1:].bool()  # [N, T-1] targets that are real tokens
        total += float(nll[keep].sum())
        count += int(keep.sum())
    return total, count


def perplexities(
    imodel: InterpolatedModel,
    tokenizer,
    texts: Sequence[str],
    mixes: dict[str, Sequence[float]],
    *,
    batch_size: int = 16,
    max_length: int = 128,
) -> dict[str, float]:
    """Perplexity of `texts` under each mix (name -> coeffs [K]); returns name -> perplexity."""
    encoded = encode_texts(tokenizer, texts, max_length)
    if not encoded:
        raise PerplexityError("every held-out text is shorter than 2 tokens; give longer texts")
    out = {}
    for name, coeffs in tqdm(mixes.items(), desc="perplexity", unit="mix"):
        total, count = mix_nll(imodel, encoded, coeffs, batch_size=batch_size)
        out[name] = math.exp(total / count)
    return out


def sweep_perplexity(
    imodel: InterpolatedModel,
    tokenizer,
    points: Sequence[GridPoint],
    coeffs: Sequence[Sequence[float]],
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 128,
) -> pd.DataFrame:
    """Perplexity at every grid point (coeffs[i] [K] of points[i]) and of the base model (all coefficients 0,
    mix id "base"); one row per mix: mix_id, grid, attribute, x, perplexity."""
    import pandas as pd

    mixes = {p.mix_id: c for p, c in zip(points, coeffs, strict=True)}
    mixes["base"] = (0.0,) * len(coeffs[0])
    ppl = perplexities(imodel, tokenizer, texts, mixes, batch_size=batch_size, max_length=max_length)
    rows = [{"mix_id": p.mix_id, "grid": p.grid, "attribute": p.attribute, "x": p.x, "perplexity": ppl[p.mix_id]}
            for p in points]  # fmt: skip
    rows.append({"mix_id": "base", "grid": "base", "attribute": "", "x": math.nan, "perplexity": ppl["base"]})
    return pd.DataFrame(rows)

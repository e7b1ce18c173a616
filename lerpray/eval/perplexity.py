"""Perplexity of held-out text under the interpolated model, per mix (the paper's fluency measure).

Teacher forcing through the same InterpolatedModel the engine generates with: for one mix c, every text is scored
in batches with `set_coeffs(c repeated N times)`, and

    perplexity(c) = exp( sum over texts and positions t >= 1 of -log p_c(token_t | tokens_<t) / number of such tokens )

Texts are right padded, padding is masked out of the sum, and each text is cut to `max_length` tokens. Texts are
tokenised as the engine tokenises a prompt (`lerpray.model.prompts.encode_prompt`), so `http_perplexities` gets the
same number from a lerpray server: each text is sent once per mix with `echo: true, max_tokens: 0, logprobs: 0`, and
the log probabilities of its first `max_length` tokens are summed (the model is causal: later text cannot change
them).
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

__all__ = [
    "PerplexityError", "encode_texts", "heldout_texts", "http_perplexities", "mix_nll", "perplexities",
    "perplexity_table", "sweep_perplexity",
]


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
    """Token ids per text as the engine encodes a prompt (special tokens as the tokenizer adds them, bar an appended
    EOS), cut to max_length; texts < 2 tokens dropped."""
    from lerpray.model.prompts import encode_prompt
    from lerpray.model.requests import GenerationRequest

    eos = frozenset([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    ids = [encode_prompt(tokenizer, GenerationRequest((), prompt=t), eos)[:max_length] for t in texts if t]
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


def http_perplexities(
    server: str,
    texts: Sequence[str],
    mixes: dict[str, dict],
    *,
    model: str | None = None,
    max_length: int = 128,
    concurrency: int = 8,
    timeout_s: float = 300.0,
    api_key: str | None = None,
) -> dict[str, float]:
    """Perplexity of `texts` under each mix (name -> the request's `interpolation`) as a lerpray server scores them;
    returns name -> perplexity, as `perplexities` computes in-process."""
    from concurrent.futures import ThreadPoolExecutor

    from lerpray.eval.backends import _post_json

    url = server.rstrip("/") + "/v1/completions"
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}

    def nll(mix: dict, text: str) -> tuple[float, int]:
        body = {"prompt": text, "echo": True, "max_tokens": 0, "logprobs": 0, "interpolation": mix}
        reply = _post_json(url, body | ({"model": model} if model else {}), headers, timeout_s)
        scores = reply["choices"][0]["logprobs"]["token_logprobs"][1:max_length]  # the first token has none
        return -sum(scores), len(scores)

    out = {}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for name, mix in tqdm(mixes.items(), desc="perplexity", unit="mix"):
            totals = list(pool.map(lambda t, m=mix: nll(m, t), [t for t in texts if t]))
            count = sum(n for _, n in totals)
            if count == 0:
                raise PerplexityError("every held-out text is shorter than 2 tokens; give longer texts")
            out[name] = math.exp(sum(total for total, _ in totals) / count)
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
    mixes = {p.mix_id: c for p, c in zip(points, coeffs, strict=True)}
    mixes["base"] = (0.0,) * len(coeffs[0])
    return perplexity_table(points, perplexities(imodel, tokenizer, texts, mixes, batch_size=batch_size,
                                                 max_length=max_length))


def perplexity_table(points: Sequence[GridPoint], ppl: dict[str, float]) -> pd.DataFrame:
    """One row per mix (mix_id, grid, attribute, x, perplexity): the grid points, then "base" if `ppl` has it."""
    import pandas as pd

    rows = [{"mix_id": p.mix_id, "grid": p.grid, "attribute": p.attribute, "x": p.x, "perplexity": ppl[p.mix_id]}
            for p in points]  # fmt: skip
    if "base" in ppl:
        rows.append({"mix_id": "base", "grid": "base", "attribute": "", "x": math.nan, "perplexity": ppl["base"]})
    return pd.DataFrame(rows)

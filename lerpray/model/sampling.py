"""Per-row decoding: sampling parameters, one vectorised next-token sampler, incremental detokenisation.

Every row of a batch carries its own temperature, top-k, top-p and (optionally) its own `torch.Generator`. The
filtering is vectorised over rows; the only per-row Python work is drawing one uniform number from each seeded
row's generator, so a row's samples depend on its seed alone, never on its batch companions. Sampling is by inverse
CDF (`searchsorted` on the cumulative probabilities), which turns that one uniform draw into a token.

Loop-form semantics, for row i with logits z_i [V]:

    if temperature_i == 0:  token = argmax(z_i)
    else:
        p = softmax(z_i / temperature_i)
        keep the top_k_i most likely tokens (top_k_i == 0: all)
        keep the smallest most-likely-first prefix whose mass reaches top_p_i (always at least one token)
        token = first j (in most-likely-first order) with cumsum(p_kept)[j] > u_i * sum(p_kept), u_i ~ U[0, 1)

Determinism: a seed gives the same draws u_i whatever the batch. The logits they meet can differ in the last bits
between batch shapes and CPUs (BLAS picks different kernels on Intel and AMD), so "same seed, same text" holds
token for token except where a draw lands within that rounding (~1e-6) of a boundary between two tokens; likewise
greedy rows are batch invariant except at near-ties of their top two logits. The tests check their margins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch


class SamplingError(ValueError):
    """Sampling parameters out of range; the message names the field and the allowed range."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1 = off
    top_k: int = 0  # 0 = off
    max_tokens: int = 64  # 0 only to score the prompt (prompt_logprobs set): no token is generated
    stop: tuple[str, ...] = ()  # the text is cut before the first stop string found
    seed: int | None = None  # per-row generator: same seed, same text, whatever the batch companions
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # subtracted per occurrence of a token already generated
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit); a dict is accepted
    logprobs: int | None = None  # None: none; 0: the chosen token's log probability; k: also the k most likely
    prompt_logprobs: int | None = None  # the same for every prompt token (OpenAI's echo)
    ignore_eos: bool = False  # run to max_tokens through EOS (benchmarks)
    min_tokens: int = 0  # vLLM's: EOS cannot be sampled and stop strings do not end the row before this many tokens

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise SamplingError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.top_k < 2**63:  # torch takes int64: a larger top_k would fail inside a batched step
            raise SamplingError(f"top_k must be >= 0 (0 = off) and below 2**63, got {self.top_k}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:  # torch.Generator.manual_seed's range
            raise SamplingError(f"seed must be in [-2**63, 2**64), got {self.seed}")
        if self.max_tokens < 0 or (self.max_tokens == 0 and self.prompt_logprobs is None):
            raise SamplingError(f"max_tokens must be >= 1 (0 only when scoring the prompt), got {self.max_tokens}")
        if not 0 <= self.min_tokens <= max(self.max_tokens, 0):
            raise SamplingError(f"min_tokens must be in [0, max_tokens = {self.max_tokens}], got {self.min_tokens}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise SamplingError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 20:
                raise SamplingError(f"{name} must be in [0, 20] (most likely alternatives per token), got {value}")
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        bias = tuple((int(token), float(value)) for token, value in bias)
        if any(not -100.0 <= value <= 100.0 or token < 0 for token, value in bias):
            raise SamplingError("logit_bias maps token ids >= 0 to biases in [-100, 100]")
        object.__setattr__(self, "logit_bias", bias)
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not s for s in self.stop):
            raise SamplingError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def reshapes_logits(self) -> bool:
        """Penalties or biases change this row's logits before sampling."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)

    def for_choice(self, index: int) -> SamplingParams:
        """Choice `index` of n: its own seed (seed + index), so choices differ yet each is reproducible."""
        return self if self.seed is None or index == 0 else replace(self, seed=(self.seed + index) % 2**64)


def make_generator(seed: int | None) -> torch.Generator | None:
    """A row's own random stream (on the CPU, whatever the model's device), or None for torch's global one.

    Drawing on the CPU costs no kernel launch per row, and a seed gives the same draws on every device.
    """
    if seed is None:
        return None
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def sample_next(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Pick one token per row. logits [N, V] -> token ids [N] (long)."""
    logits = logits.float()
    tokens = logits.argmax(dim=-1)  # [N]
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if not sampled:
        return tokens
    rows = torch.tensor(sampled, device=logits.device)  # [S]
    chosen = _sample_rows(
        logits.index_select(0, rows),
        [params[i] for i in sampled],
        [generators[i] for i in sampled],
    )
    tokens[rows] = chosen
    return tokens


def _sample_rows(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Sample rows that are not greedy. logits [S, V] -> token ids [S]."""
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device)  # [S]
    probs = torch.softmax(logits / temperature[:, None], dim=-1)  # [S, V]
    order = None
    if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
        probs, order = probs.sort(dim=-1, descending=True, stable=True)  # [S, V] most likely first
        probs = _filter_sorted(probs, params)
    cdf = probs.cumsum(dim=-1)  # [S, V]
    u = _uniforms(generators, device) * cdf[:, -1]  # [S]
    picked = torch.searchsorted(cdf, u[:, None], right=True).clamp_(max=cdf.shape[-1] - 1)  # [S, 1]
    if order is not None:
        picked = order.gather(-1, picked)
    return picked[:, 0]


def _filter_sorted(probs: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Zero the tokens outside each row's top-k and top-p. probs [S, V], sorted descending per row."""
    device, vocab = probs.device, probs.shape[-1]
    top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=device)  # [S]
    # top_p == 1 must keep everything, even tail tokens whose float mass_before rounds up to 1.
    top_p = torch.tensor([p.top_p if p.top_p < 1.0 else float("inf") for p in params], device=device)  # [S]
    rank = torch.arange(vocab, device=device)[None, :]  # [1, V]
    mass_before = probs.cumsum(dim=-1) - probs  # [S, V] mass of the strictly more likely tokens
    # The first token is always kept (its mass_before is 0 < top_p).
    keep = (rank < top_k[:, None]) & (mass_before < top_p[:, None])  # [S, V]
    return probs * keep


def _uniforms(generators: Sequence[torch.Generator | None], device: torch.device) -> torch.Tensor:
    """One U[0, 1) draw per row (drawn on the CPU): seeded rows from their own generator, the rest from torch's
    global stream. Returns [S] on `device`."""
    u = torch.empty(len(generators))  # [S]
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if unseeded:
        u[unseeded] = torch.rand(len(unseeded))
    for i, generator in enumerate(generators):
        if generator is not None:
            u[i] = torch.rand((), generator=generator)
    return u.to(device)


class TextStream:
    """Incremental detokenisation of one row, with stop strings.

    Text is released only when it decodes cleanly (no trailing U+FFFD from a multi-byte character split across
    tokens) and is not a possible start of a stop string; a found stop string ends the row and is cut off with
    everything after it. Decoding uses a sliding window (`prefix_offset`, `read_offset`, as in TGI and vLLM) so each
    token costs O(1) decodes, with a few prompt tokens as left context so that the first token's leading space is
    decoded as it would be inside the full text.
    """

    CONTEXT_TOKENS = 5

    def __init__(self, tokenizer, prompt_ids: Sequence[int], stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-self.CONTEXT_TOKENS :])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = tuple(stop)
        self._pending = ""  # decoded but held back: it may be the start of a stop string

    def push(self, token_id: int, can_stop: bool = True) -> tuple[str, bool]:
        """Add one generated token. Returns (text to release now, whether a stop string ended the row); before
        `min_tokens` (can_stop False) a stop string is released as text."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._pending += full[len(prefix) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._release(final=False, can_stop=can_stop)

    def flush(self) -> tuple[str, bool]:
        """The row ends (EOS or length): release everything held back, a trailing partial character included."""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        self._pending += full[len(prefix) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        return self._release(final=True)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _release(self, final: bool, can_stop: bool = True) -> tuple[str, bool]:
        found = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0] if can_stop else []
        if found:
            text, self._pending = self._pending[: min(found)], ""
            return text, True
        keep = 0 if final else self._stop_prefix_length(self._pending)  # one may complete at min_tokens or later
        text, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
        return text, False

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        longest = max((len(s) for s in self._stop), default=0)
        for k in range(min(len(text), longest - 1), 0, -1):
            if any(s.startswith(text[-k:]) for s in self._stop):
                return k
        return 0

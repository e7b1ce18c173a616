"""One running choice of a request, and how a row turns logits into its next token.

A `Row` is what the engine schedules: it owns a KV-cache slot, knows how much of its prompt is cached, samples with
its own generator, and carries what penalties and schedules need (its generated-token counts, its mix per token).
`choose_tokens` is the per-row decoding of one step, vectorised where rows agree:

    for row i with logits z_i [V] (the model's, under the row's own mix):
        logprobs_i = log_softmax(z_i)                                   reported, never reshaped
        z_i[t] -= frequency_penalty * count_i[t] + presence_penalty * (count_i[t] > 0)
        z_i[t] += logit_bias[t]
        token_i = sample_next(z_i, sampling_i, generator_i)             greedy / temperature / top-k / top-p
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lerpray.model.requests import GenerationRequest, TokenEvent
from lerpray.model.sampling import SamplingParams, TextStream, make_generator, sample_next

__all__ = ["Row", "choose_tokens", "prompt_token_logprobs"]


@dataclass
class Row:
    request: GenerationRequest
    sampling: SamplingParams  # the request's, with this choice's seed
    prompt_ids: list[int]
    generator: torch.Generator | None
    stream: TextStream
    index: int = 0  # choice index
    parent: Row | None = None  # choices 1..n-1 copy choice 0's prompt cache instead of prefilling it
    slot: int = -1
    admitted: int = 0  # admission order: the oldest prefilling row always makes progress
    prefilled: int = 0  # prompt tokens in the cache
    last_token: int = -1
    generated: int = 0
    finished: bool = False
    counts: Counter = field(default_factory=Counter)  # generated token -> occurrences (penalties)
    prompt_logprobs: list | None = None  # gathered chunk by chunk while prefilling
    text: str = ""  # released so far (what a steer hook scores)
    steered: tuple[float, ...] | None = None  # [K] the steer hook's latest coefficients, replacing the mix's

    @classmethod
    def choices(cls, request: GenerationRequest, prompt_ids: list[int], tokenizer) -> list[Row]:
        """The request's n rows: choice 0 prefills the prompt, the others copy its cache (seeds seed + i)."""
        rows: list[Row] = []
        for index in range(request.n):
            sampling = request.sampling.for_choice(index)
            stream = TextStream(tokenizer, prompt_ids, sampling.stop)
            rows.append(cls(request, sampling, prompt_ids, make_generator(sampling.seed), stream, index,
                            parent=rows[0] if rows else None))
        if request.sampling.prompt_logprobs is not None:
            rows[0].prompt_logprobs = [(prompt_ids[0], None, [])]
        return rows

    @property
    def decoding(self) -> bool:
        return self.prefilled == len(self.prompt_ids)

    @property
    def remaining(self) -> int:
        return len(self.prompt_ids) - self.prefilled

    @property
    def next_position(self) -> int:
        """Where the row's next cache write goes: its next prompt token, or the token it last sampled."""
        return self.prefilled if not self.decoding else len(self.prompt_ids) + self.generated - 1

    def mix(self) -> tuple[float, ...]:
        """The coefficients of the row's next forward pass: its mix's at the token it will produce."""
        return self.steered if self.steered is not None else self.request.mix.at(self.generated)

    def emit(self, token: int, eos: frozenset[int], logprob=None, top=None) -> TokenEvent:
        """Record a sampled token; returns its event (text released, finish reason)."""
        self.last_token, self.generated = token, self.generated + 1
        self.counts[token] += 1
        at_eos = token in eos and not self.sampling.ignore_eos
        text, stopped = self.stream.flush() if at_eos else self.stream.push(token)
        finish = "stop" if stopped or at_eos else None
        if finish is None and self.generated >= self.sampling.max_tokens:
            tail, stopped = self.stream.flush()
            text, finish = text + tail, "stop" if stopped else "length"
        self.finished = finish is not None
        if self.request.steer is not None:  # between steps: the next forward pass runs what it returns
            self.text += text
            coeffs = self.request.steer(self.index, self.text, self.generated)  # the last call sees the whole text
            if coeffs is not None and not self.finished:
                self.steered = self.request.mix.widen(tuple(float(c) for c in coeffs))  # the set's [K] -> row
        return self._event(token, text, finish, logprob, top)

    def score_only(self) -> TokenEvent:
        """The one event of a max_tokens=0 request: its prompt's log probabilities, no token."""
        self.finished = True
        return self._event(-1, "", "length", None, None)

    def _event(self, token, text, finish, logprob, top) -> TokenEvent:
        prompt = self.prompt_logprobs if self.generated <= 1 and self.prompt_logprobs is not None else None
        return TokenEvent(self.request.request_id, token, text, finish, len(self.prompt_ids), self.generated,
                          self.index, logprob, top, prompt)


def choose_tokens(logits: torch.Tensor, rows: Sequence[Row]) -> tuple[list[int], list, list]:
    """Next token of each row. logits [N, V] -> (tokens, logprobs or None, top alternatives or None) per row."""
    logits = logits.float()
    wants = [i for i, r in enumerate(rows) if r.sampling.logprobs is not None]
    logprobs = torch.log_softmax(logits[wants], dim=-1) if wants else None  # [W, V], before any reshaping
    reshape = [i for i, r in enumerate(rows) if r.sampling.reshapes_logits]
    if reshape:
        logits = logits.clone()
        for i in reshape:
            _reshape_(logits[i], rows[i])
    tokens = sample_next(logits, [r.sampling for r in rows], [r.generator for r in rows]).tolist()
    chosen, tops = [None] * len(rows), [None] * len(rows)
    for w, i in enumerate(wants):
        chosen[i] = float(logprobs[w, tokens[i]])
        k = rows[i].sampling.logprobs
        if k:
            values, ids = logprobs[w].topk(k)
            tops[i] = list(zip(ids.tolist(), values.tolist(), strict=True))
    return tokens, chosen, tops


def _reshape_(z: torch.Tensor, row: Row) -> None:
    """OpenAI's presence/frequency penalties over the row's generated tokens, then its logit bias. z [V]."""
    params = row.sampling
    if row.counts and (params.presence_penalty or params.frequency_penalty):
        ids = torch.tensor(list(row.counts), device=z.device)
        counts = torch.tensor(list(row.counts.values()), dtype=z.dtype, device=z.device)
        z.index_add_(0, ids, -(params.frequency_penalty * counts + params.presence_penalty))
    for token, bias in params.logit_bias:
        if token < z.shape[0]:
            z[token] += bias


def prompt_token_logprobs(logits: torch.Tensor, targets: Sequence[int], top: int) -> list:
    """Log probability of each next prompt token. logits [T, V] at T consecutive prompt positions, targets the
    T (or T - 1, at the prompt's end) tokens that follow them -> [(token, logprob, [(alt id, logprob)])]."""
    if not targets:
        return []
    logprobs = torch.log_softmax(logits[: len(targets)].float(), dim=-1)  # [T, V]
    ids = torch.tensor(targets, device=logprobs.device)
    chosen = logprobs.gather(1, ids[:, None])[:, 0].tolist()
    alternatives = [[]] * len(targets)
    if top:
        values, top_ids = logprobs.topk(top, dim=-1)
        alternatives = [list(zip(i, v, strict=True)) for i, v in zip(top_ids.tolist(), values.tolist(), strict=True)]
    return [(t, lp, alt) for t, lp, alt in zip(targets, chosen, alternatives, strict=True)]

"""One running choice of a request, and how a row turns logits into its next token.

A `Row` is what the engine schedules: it owns a KV-cache slot, knows how much of its prompt is cached, samples with
its own generator, and carries what penalties and schedules need (its generated-token counts, its mix per token).
`choose_tokens` is the per-row decoding of one step, vectorised where rows agree:

    for row i with logits z_i [V] (the model's, under the row's own mix):
        logprobs_i = log_softmax(z_i)                                   reported, never reshaped
        z_i[eos] = -inf                   while the row has fewer than min_tokens generated tokens
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
    unreleased: tuple | None = None  # (token, at_eos, logprob, top) recorded, its text not yet released

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
    def before_min_tokens(self) -> bool:
        """EOS and stop strings cannot end the row yet (its next token is below `min_tokens`)."""
        return self.generated < self.sampling.min_tokens

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

    def record(self, token: int, eos: frozenset[int], logprob=None, top=None) -> None:
        """Count a sampled token at once (the next step's input, penalties, EOS and length end the row now); its
        text and event wait for `release`, which the engine may run while the next forward is on the GPU."""
        self.last_token, self.generated = token, self.generated + 1
        self.counts[token] += 1
        at_eos = token in eos and not self.sampling.ignore_eos
        self.unreleased = (token, at_eos, logprob, top)
        self.finished = at_eos or self.generated >= self.sampling.max_tokens

    def release(self) -> TokenEvent:
        """The recorded token's event: its text (held back near a stop string; a stop string found ends the row),
        its finish reason, and the steer hook's next coefficients."""
        token, at_eos, logprob, top = self.unreleased
        self.unreleased = None
        can_stop = self.generated >= self.sampling.min_tokens  # vLLM's rule: stop strings count from min_tokens on
        text, stopped = self.stream.flush() if at_eos else self.stream.push(token, can_stop)
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


def choose_tokens(logits: torch.Tensor, rows: Sequence[Row], eos: frozenset[int] = frozenset()
                  ) -> tuple[list[int], list, list]:  # fmt: skip
    """Next token of each row. logits [N, V] -> (tokens, logprobs or None, top alternatives or None) per row.

    Everything is computed on the logits' device and comes to the host in one copy (one device sync per step).
    """
    logits = logits.float()
    wants = [i for i, r in enumerate(rows) if r.sampling.logprobs is not None]
    logprobs = torch.log_softmax(logits[wants], dim=-1) if wants else None  # [W, V], before any reshaping
    reshape = [i for i, r in enumerate(rows) if r.sampling.reshapes_logits]
    hold = [i for i, r in enumerate(rows) if r.before_min_tokens] if eos else []
    if reshape or hold:
        logits = logits.clone()
        for i in reshape:
            _reshape_(logits[i], rows[i])
        if hold:  # one indexed write: the held rows' EOS ids
            logits[torch.tensor(hold, device=logits.device)[:, None],
                   torch.tensor(sorted(eos), device=logits.device)[None, :]] = float("-inf")  # fmt: skip
    tokens = sample_next(logits, [r.sampling for r in rows], [r.generator for r in rows])  # [N] on the device
    parts, top = [tokens.double()], max((rows[i].sampling.logprobs for i in wants), default=0)
    if wants:
        parts.append(logprobs.gather(1, tokens[wants][:, None])[:, 0].double())  # [W] the chosen tokens'
    if top:
        values, ids = logprobs.topk(top)  # [W, top]
        parts += [values.flatten().double(), ids.flatten().double()]
    host = torch.cat(parts).tolist()  # float64 holds token ids and float32 log-probs exactly
    n, w = len(rows), len(wants)
    tokens = [int(t) for t in host[:n]]
    chosen, tops = [None] * n, [None] * n
    for j, i in enumerate(wants):
        chosen[i] = host[n + j]
        k = rows[i].sampling.logprobs
        if k:
            start = n + w + j * top
            values, ids = host[start : start + k], host[n + w + w * top + j * top :][:k]
            tops[i] = list(zip((int(t) for t in ids), values, strict=True))
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

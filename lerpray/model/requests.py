"""What goes into the engine and what comes out: requests, per-token events, finished results, and the errors a
request can raise. Plain data, shared by the engine, the server, the batch pipeline and the sweeps."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from lerpray.model.sampling import SamplingParams
from lerpray.steering import ResolvedMix

__all__ = [
    "EngineError", "GenerationRequest", "GenerationResult", "PromptTooLongError", "ResolvedMix", "TokenEvent",
    "UnloadableSetError",
]


class EngineError(ValueError):
    """A request the engine cannot run as given; the message says what to change."""


class PromptTooLongError(EngineError):
    """The prompt plus max_tokens does not fit in the model's context."""


class UnloadableSetError(EngineError):
    """A request names an anchor set its engine can never make resident (model/anchor_pool.py); says what to change."""


@dataclass
class GenerationRequest:
    coeffs: tuple[float, ...] = ()  # [K], in the anchor set's order: a constant mix (or token 0's of `mix`)
    prompt: str | None = None
    messages: list[dict] | None = None  # chat: rendered with the tokenizer's chat template
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    n: int = 1  # choices: one prefill, then n rows; choice i samples with seed + i (SamplingParams.for_choice)
    mix: ResolvedMix | None = None  # the mix of every generated token (lerpray.steering.resolve); None: coeffs
    anchor_set: str | None = None  # the set `mix` belongs to, for an engine that pages sets (paged_engine.py)
    # Closed loop (lerpray.feedback.Steerer): called by each row after each token it generates with (choice index,
    # its text so far, tokens generated), the last token's call included; coefficients [K] replace the row's mix
    # from its next token on, None keeps it. Runs in the engine's step, so it must be cheap; needs a mix that may
    # change (`mix.scheduled`).
    steer: Callable[[int, str, int], tuple[float, ...] | None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mix is None:
            self.mix = ResolvedMix.constant(self.coeffs)
        self.coeffs = self.mix.coeffs
        if self.steer is not None and not self.mix.scheduled:
            raise EngineError("a steer hook needs a mix whose coefficients may change between tokens (a ResolvedMix "
                              "with feedback, from lerpray.steering.resolve)")  # fmt: skip


@dataclass
class TokenEvent:
    request_id: str
    token_id: int  # -1 for a scoring-only request's single event (max_tokens 0)
    text: str  # the new text released by this token (may be "" while held back)
    finish_reason: str | None  # None, "stop" (EOS or stop string) or "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0  # tokens generated so far, this one included
    index: int = 0  # which of the request's n choices
    logprob: float | None = None  # log probability of token_id under the row's mix (sampling.logprobs set)
    top_logprobs: list[tuple[int, float]] | None = None  # the most likely tokens and their log probabilities
    # With sampling.prompt_logprobs, the first event of choice 0 carries one entry per prompt token (the choices
    # share one prompt, so the others carry None):
    # (token id, log probability or None for the first token, [(alternative id, log probability), ...]).
    prompt_logprobs: list[tuple[int, float | None, list[tuple[int, float]]]] | None = None


@dataclass
class GenerationResult:
    request_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    index: int = 0

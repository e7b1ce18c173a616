"""What goes into the engine and what comes out: requests, per-token events, finished results, and the errors a
request can raise. Plain data, shared by the engine, the server, the batch pipeline and the sweeps."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from lerpray.model.sampling import SamplingParams

__all__ = ["EngineError", "GenerationRequest", "GenerationResult", "PromptTooLongError", "TokenEvent"]


class EngineError(ValueError):
    """A request the engine cannot run as given; the message says what to change."""


class PromptTooLongError(EngineError):
    """The prompt plus max_tokens does not fit in the model's context."""


@dataclass
class GenerationRequest:
    coeffs: tuple[float, ...]  # [K], in the anchor set's order (lerpray.mixing.resolve_mix)
    prompt: str | None = None
    messages: list[dict] | None = None  # chat: rendered with the tokenizer's chat template
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class TokenEvent:
    request_id: str
    token_id: int
    text: str  # the new text released by this token (may be "" while held back)
    finish_reason: str | None  # None, "stop" (EOS or stop string) or "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0  # tokens generated so far, this one included


@dataclass
class GenerationResult:
    request_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

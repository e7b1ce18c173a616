"""OpenAI-compatible response, stream-chunk, model-list and error bodies.

Each reply also says what produced it: `interpolation` (every anchor's resolved coefficient) on full responses,
and OpenAI's `system_fingerprint` (the anchor set's version and manifest digest) on responses and chunks alike.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, JsonValue, model_serializer

__all__ = [
    "AssistantMessage", "ChatChoice", "ChatChunkChoice", "ChatCompletionChunk", "ChatCompletionResponse", "ChatDelta",
    "ChatLogprobs", "CompletionChoice", "CompletionChunk", "CompletionLogprobs", "CompletionResponse", "ErrorBody",
    "ErrorResponse", "ModelCard", "ModelList", "TokenLogprob", "TopLogprob", "Usage",
]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class _Response(BaseModel):
    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = Field(None, description="the anchor set: v<version>-<manifest sha256 prefix>")


class _FullResponse(_Response):
    """A whole (not streamed) reply: its token counts and the mix that produced it."""

    usage: Usage
    interpolation: dict[str, float] = Field(description="the resolved coefficient of every anchor")


class CompletionLogprobs(BaseModel):
    """Legacy completions' logprobs: parallel lists, one entry per token (an echoed prompt's first has nulls)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list, description="where each token starts in the choice's text")


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(description="the token's UTF-8 bytes; null for part of a character")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(_FullResponse):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class CompletionChunk(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(_FullResponse):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        """OpenAI sends `role` only in the first delta and no `content` in the last."""
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One model id: the anchor set on its base model, or a preset (a named mix of it, `parent` the served id)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lerpray"
    parent: str | None = Field(None, description="a preset's served model id; null for the served id itself")
    interpolation: JsonValue = Field(None, description="a preset's mix (the request form); null: the hull's centre")
    base_model: dict[str, Any]
    anchors: list[str]
    attributes: dict[str, dict[str, str]] = Field(description='attribute -> {"high": anchor, "low": anchor}')
    extrapolation: dict[str, float] | None = Field(description="bounds for extrapolate: true; null = not allowed")
    context_length: int | None = Field(description="the longest prompt + max_tokens a request may have (capped by "
                                       "the KV cache's budget); null: not known until a replica loads the set (a "
                                       "multiplexed app)")
    kv_cache: dict[str, int] | None = Field(
        None, description="the replica's KV cache: slots, tokens_per_slot, model_context (wanted) and bytes"
    )
    max_tokens_cap: int = Field(description="the largest max_tokens a request may ask for")
    default_max_tokens: int = Field(description="max_tokens when a request gives none")
    fingerprint: str = Field(description="the anchor set: v<version>-<manifest sha256 prefix>, as system_fingerprint")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody

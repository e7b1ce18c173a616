"""OpenAI-compatible request, response, stream-chunk and error bodies, plus lerpray's `interpolation` object.

Requests are strict (JSON types are not coerced: "max_tokens": "5" is an error, as on OpenAI's API) and reject
unknown fields, so a typo gets a 400 naming it instead of being silently ignored. OpenAI fields lerpray does not
implement are accepted only at their neutral values. The `interpolation` value is passed as-is to
`lerpray.mixing.resolve_mix`, the one place mixes are validated, e.g.

    {"alpha": {"sentiment": 0.8}, "lambda": {"sentiment": 1.0}}    {"anchors": {"sentiment.positive": 0.7, ...}}
    {"alpha": {"sentiment": 1.5}, "extrapolate": true}
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

__all__ = [
    "ChatChunkChoice", "ChatChoice", "ChatCompletionChunk", "ChatCompletionRequest", "ChatCompletionResponse",
    "ChatDelta", "ChatMessage", "CompletionChoice", "CompletionChunk", "CompletionRequest", "CompletionResponse",
    "ErrorBody", "ErrorResponse", "ModelCard", "ModelList", "Usage",
]

MAX_STOP_STRINGS = 4  # OpenAI's limit
# Fields of OpenAI's API that lerpray accepts only at these neutral values.
_NEUTRAL: dict[str, tuple[object, ...]] = {
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "tools": (None, []),
    "tool_choice": (None, "none"),
}

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool = False


class _GenerationFields(BaseModel):
    """What completions and chat share: sampling, streaming, the mix."""

    model_config = _STRICT

    model: str | None = Field(None, description="the served model id (GET /v1/models); omitted = the served one")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="extension: keep the k most likely tokens (0 = off)")
    n: int | None = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    interpolation: JsonValue = Field(None, description="the mix; omitted = the centre of the anchors' hull")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    top_logprobs: int | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError(f"only n=1 is supported (got {n}); send {n} requests instead, with different seeds")
        return n

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP_STRINGS or any(not s for s in strings):
            raise ValueError(f"give at most {MAX_STOP_STRINGS} non-empty stop strings")
        return stop

    @field_validator(*_NEUTRAL, check_fields=False)
    @classmethod
    def _neutral(cls, value: object, info: ValidationInfo) -> object:
        allowed = _NEUTRAL[info.field_name]
        if value not in allowed:
            raise ValueError(f"is not supported by this server; remove it or set it to {allowed[1]!r}")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_GenerationFields):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError(f"give one prompt per request (got a list of {len(prompt)}); send one request each")
        return prompt

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(BaseModel):
    model_config = _STRICT

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_template_message(self) -> dict[str, str]:
        """{"role", "content"} for a chat template; OpenAI's "developer" role is the older "system"."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(_GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: bool | None = None
    tools: list[Any] | None = None
    tool_choice: str | None = None

    @model_validator(mode="after")
    def _one_max_tokens(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


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


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage
    interpolation: dict[str, float] = Field(description="the resolved coefficient of every anchor")


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
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage
    interpolation: dict[str, float] = Field(description="the resolved coefficient of every anchor")


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
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One served model: the anchor set on its base model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lerpray"
    base_model: dict[str, Any]
    anchors: list[str]
    attributes: dict[str, dict[str, str]] = Field(description='attribute -> {"high": anchor, "low": anchor}')
    extrapolation: dict[str, float] | None = Field(description="bounds for extrapolate: true; null = not allowed")
    context_length: int


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

"""OpenAI-compatible request bodies, plus lerpray's `interpolation` object.

Requests are strict (JSON types are not coerced: "max_tokens": "5" is an error, as on OpenAI's API) and reject
unknown fields, so a typo gets a 400 naming it instead of being silently ignored. What each field does here (honoured,
ignored, neutral values only, refused) is `lerpray.serve.fields`, the one list per endpoint; these models give each
field its JSON type. The `interpolation` value is passed as-is to `lerpray.steering.resolve`, the one place mixes
are validated and resolved (with the model id's mix), e.g.

    {"alpha": {"sentiment": 0.8}, "lambda": {"sentiment": 1.0}}    {"anchors": {"sentiment.positive": 0.7, ...}}
    {"alpha": {"sentiment": 1.5}, "extrapolate": true}
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lerpray.serve import fields
from lerpray.serve.fields import FieldRule

__all__ = ["ChatCompletionRequest", "ChatMessage", "CompletionRequest", "StreamOptions", "TextPart"]

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_CHOICES = 128  # OpenAI's limit on n and best_of
MAX_LOGPROBS = 20  # most alternatives per token (OpenAI's chat limit; its completions allow 5)
UNSUPPORTED = "unsupported_value"  # the error type (and OpenAI's error code) of a value this server does not take
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
_NEUTRAL_ONLY = (fields.Kind.NOT_YET, fields.Kind.REFUSED)


class _Checked(BaseModel):
    """A body whose NOT_YET and REFUSED fields (per `FIELDS`) take only their neutral values."""

    model_config = _STRICT
    FIELDS: ClassVar[dict[str, FieldRule]] = {}

    @field_validator("*")
    @classmethod
    def _neutral_only(cls, value: object, info: ValidationInfo) -> object:
        rule = cls.FIELDS.get(info.field_name)
        if rule is not None and rule.kind in _NEUTRAL_ONLY and value not in rule.neutral:
            raise PydanticCustomError(UNSUPPORTED, fields.refusal(rule))
        return value


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool = False
    include_obfuscation: bool | None = None  # ignored: chunks carry no obfuscation padding


class _GenerationFields(_Checked):
    """What completions and chat share (fields.py's _SHARED): sampling, streaming, the mix."""

    model: str | None = Field(None, description="a served model id (GET /v1/models), or one with an inline mix")
    max_tokens: int | None = Field(None, ge=0, description="0 only with echo (scores the prompt)")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="extension: keep the k most likely tokens (0 = off)")
    min_tokens: int | None = Field(None, ge=0, description="extension (vLLM's): no EOS or stop before this many")
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    interpolation: JsonValue = Field(None, description="the mix; omitted = the model id's (the hull's centre)")
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP_STRINGS or any(not s for s in strings):
            raise ValueError(f"give at most {MAX_STOP_STRINGS} non-empty stop strings")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        bad = [k for k in bias or {} if not (k.isascii() and k.isdigit())]
        if bad:
            raise ValueError(f"keys are token ids written as strings, e.g. {{\"50256\": -100}}; got {bad[0][:32]!r}")
        return bias

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(token), bias) for token, bias in (self.logit_bias or {}).items())

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_GenerationFields):
    FIELDS = fields.COMPLETIONS

    prompt: str | list[str]
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("is an empty list; give a string or a list of strings (one choice per prompt)")
        return prompt

    def prompt_texts(self) -> list[str]:
        """One engine request per prompt; a reply's choices are n per prompt, prompt-major."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    model_config = _STRICT

    type: Literal["text"]
    text: str

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, part: Any) -> Any:
        if isinstance(part, dict) and isinstance(part.get("type"), str) and part["type"] != "text":
            raise ValueError(f"only text parts are supported (got type {part['type'][:32]!r}); send text")
        return part


class ChatMessage(_Checked):
    FIELDS = fields.MESSAGE

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: JsonValue = None
    function_call: JsonValue = None
    tool_call_id: JsonValue = None
    audio: JsonValue = None

    @field_validator("role")
    @classmethod
    def _no_tool_roles(cls, role: str) -> str:
        if role in ("tool", "function"):
            raise ValueError(f"{role} messages are not supported by this server ({fields.MESSAGE['tool_calls'].note})")
        return role

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content (a string or text parts)")
        return self

    def as_template_message(self) -> dict[str, str]:
        """{"role", "content"} for a chat template; OpenAI's "developer" role is the older "system"."""
        content = self.content or ""
        text = content if isinstance(content, str) else "".join(p.text for p in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(_GenerationFields):
    FIELDS = fields.CHAT

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: JsonValue = None
    safety_identifier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    prediction: JsonValue = None
    modalities: JsonValue = None
    response_format: JsonValue = None
    tools: JsonValue = None
    tool_choice: JsonValue = None
    functions: JsonValue = None
    function_call: JsonValue = None
    audio: JsonValue = None
    web_search_options: JsonValue = None
    moderation: JsonValue = None

    @model_validator(mode="after")
    def _one_max_tokens(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

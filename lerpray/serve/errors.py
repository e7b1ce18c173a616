"""The one place where errors become HTTP: OpenAI's error JSON {"error": {"message", "type", "param", "code"}}.

Code elsewhere raises its own ValueError subclasses (MixError, SamplingError, ...) or the constructors below;
`to_api_error` maps each to a status and a message that names the field and says what to change. Bad input is
always a 4xx; only a bug is a 500.
"""

from __future__ import annotations

import logging
import re

from pydantic import ValidationError

from lerpray.mixing import MixError
from lerpray.model.requests import EngineError, PromptTooLongError, UnloadableSetError
from lerpray.model.sampling import SamplingError
from lerpray.serve.batcher import QueueFullError
from lerpray.serve.responses import ErrorBody, ErrorResponse
from lerpray.steering import UnknownModelError

__all__ = [
    "ApiError",
    "body_too_large",
    "max_tokens_over_cap",
    "not_found",
    "to_api_error",
    "unauthorized",
    "unknown_model",
]

logger = logging.getLogger(__name__)

INVALID = "invalid_request_error"
_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}  # pydantic's union-branch names in `loc`


class ApiError(Exception):
    """An HTTP error in OpenAI's shape; `headers` go on the response (e.g. Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse(error=ErrorBody(message=message, type=type, param=param, code=code))
        self.headers = headers or {}

    def json(self) -> dict:
        return self.body.model_dump()


def to_api_error(err: Exception, *, prompt_field: str = "prompt") -> ApiError:
    """Map any exception raised while serving a request to the error the client gets.

    `prompt_field` names the request field holding the prompt ("prompt" or "messages") for context errors.
    """
    if isinstance(err, ApiError):
        return err
    if isinstance(err, ValidationError):
        return _from_validation(err)
    if isinstance(err, UnknownModelError):
        return ApiError(404, err.message, param="model", code="model_not_found")
    if isinstance(err, MixError):
        return ApiError(400, f"{err.field}: {err.message}", param=err.field, code="invalid_interpolation")
    if isinstance(err, SamplingError):
        return ApiError(400, str(err), code="invalid_value")
    if isinstance(err, PromptTooLongError):
        return ApiError(400, str(err), param=prompt_field, code="context_length_exceeded")
    if isinstance(err, UnloadableSetError):  # the server's anchor_capacity is too small for the set: its operator's
        return ApiError(503, str(err), type="server_error", code="anchor_set_unavailable")
    if isinstance(err, EngineError):  # a request the engine cannot run as given (e.g. chat without a template)
        return ApiError(400, str(err), param=prompt_field, code="invalid_value")
    if isinstance(err, QueueFullError):
        return ApiError(
            503, str(err), type="server_error", code="overloaded", headers={"Retry-After": str(err.retry_after_s)}
        )
    logger.exception("internal error while serving a request", exc_info=err)
    return ApiError(500, "internal server error; see the replica logs", type="server_error", code="internal_error")


def unauthorized(header_present: bool) -> ApiError:
    what = "incorrect API key provided" if header_present else "missing API key"
    return ApiError(
        401, f"{what}; send the header 'Authorization: Bearer <key>'", param="Authorization", code="invalid_api_key"
    )


def unknown_model(requested: str, served: str, presets: list[str]) -> ApiError:
    message = UnknownModelError(requested, served, presets).message
    return ApiError(404, message, param="model", code="model_not_found")


def max_tokens_over_cap(requested: int, cap: int) -> ApiError:
    return ApiError(
        400, f"max_tokens is {requested}, over this server's cap of {cap}; ask for at most {cap}",
        param="max_tokens", code="invalid_value",
    )


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is over the {limit}-byte limit; send a smaller body", code="body_too_large")


def not_found(path: str) -> ApiError:
    return ApiError(404, f"no route {path}; see /v1/completions, /v1/chat/completions, /v1/models", code="not_found")


def _from_validation(err: ValidationError) -> ApiError:
    found = err.errors(include_url=False)
    # A union (e.g. content: str | list[part]) reports one error per branch; the deepest says most.
    first = max((e for e in found if e["loc"][:1] == found[0]["loc"][:1]), key=lambda e: len(e["loc"]))
    if first["type"] == "json_invalid":
        detail = first.get("ctx", {}).get("error", first["msg"])
        return ApiError(400, f"request body is not valid JSON ({detail}); send a JSON object", code="invalid_json")
    param = _param(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if not param:
        if first["type"] == "value_error":  # a rule across fields
            return ApiError(400, message, code="invalid_value")
        return ApiError(400, f"request body: {message}; send a JSON object", code="invalid_type")
    if first["type"] == "extra_forbidden":
        message = "unknown field; remove it (see the OpenAI API reference for the fields this endpoint takes)"
    return ApiError(400, f"{param}: {message}", param=param, code=_code(first["type"]))


def _param(loc: tuple) -> str:
    """('messages', 0, 'content', 'str') -> 'messages[0].content' (pydantic puts union branch names in loc)."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif isinstance(item, str) and _FIELD_NAME.match(item) and item not in _TYPE_TAGS:
            parts.append(f".{item}" if parts else item)
    return "".join(parts)


def _code(pydantic_type: str) -> str:
    if pydantic_type == "missing":
        return "missing_field"
    if pydantic_type == "extra_forbidden":
        return "unknown_field"
    if pydantic_type == "unsupported_value":  # schemas.UNSUPPORTED: a real OpenAI field this server does not take
        return pydantic_type
    return "invalid_type" if pydantic_type.endswith("_type") else "invalid_value"

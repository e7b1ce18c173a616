"""Every request field the installed `openai` client defines, with example values built from its TypedDicts.

Read from openai/types/completion_create_params.py and openai/types/chat/completion_create_params.py (not a hand
list), so a new field in a newer client shows up in the tests by itself. Imported by the unit and integration tests
as `openai_fields` (pytest puts tests/, the folder of the root conftest.py, on sys.path).
"""

from __future__ import annotations

import collections.abc
import json
import types
import typing
from typing import Any, Literal, Union

import typing_extensions
from typing_extensions import is_typeddict

ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
BASE_BODIES = {
    "/v1/completions": {"model": "lerpray", "prompt": "x"},
    "/v1/chat/completions": {"model": "lerpray", "messages": [{"role": "user", "content": "x"}]},
}
MAX_VARIANTS = 40  # examples per field
_WRAPPERS = {typing.Annotated, typing_extensions.Annotated, typing.Required, typing_extensions.Required,
             typing.NotRequired, typing_extensions.NotRequired}


def request_types() -> dict[str, type]:
    """path -> the openai client's TypedDict of that endpoint's request body (the non-streaming one: all fields)."""
    from openai.types import completion_create_params as completions
    from openai.types.chat import completion_create_params as chat

    return {
        "/v1/completions": completions.CompletionCreateParamsNonStreaming,
        "/v1/chat/completions": chat.CompletionCreateParamsNonStreaming,
    }


def field_names(typed_dict: type) -> list[str]:
    return sorted(typing.get_type_hints(typed_dict))


def required_keys(typed_dict: type) -> set[str]:
    """Keys marked Required[...] (or, in a total TypedDict, not marked NotRequired[...])."""
    hints = typing.get_type_hints(typed_dict, include_extras=True)
    marked = {k: getattr(typing.get_origin(h), "_name", None) for k, h in hints.items()}
    total = getattr(typed_dict, "__total__", True)
    return {k for k, mark in marked.items() if mark == "Required" or (total and mark != "NotRequired")}


def message_field_names() -> list[str]:
    """Every key of every chat message type (ChatCompletionMessageParam's union members)."""
    from openai.types.chat import ChatCompletionMessageParam

    return sorted({k for member in typing.get_args(ChatCompletionMessageParam) for k in field_names(member)})


def variants() -> list[tuple[str, str, object]]:
    """(path, field, value) for every field of both endpoints and every example value of it."""
    out = []
    for path, typed_dict in request_types().items():
        for name, hint in typing.get_type_hints(typed_dict).items():
            for value in examples(hint)[:MAX_VARIANTS]:
                out.append((path, name, value))
    return out


def as_params(variants: list[tuple[str, str, object]]) -> list:
    """pytest params with readable ids: chat-tool_choice-3."""
    import pytest

    counts: dict[tuple[str, str], int] = {}
    params = []
    for path, name, value in variants:
        i = counts[path, name] = counts.get((path, name), -1) + 1
        params.append(pytest.param(path, name, value, id=f"{ENDPOINTS[path]}-{name}-{i}"))
    return params


def examples(hint: Any, depth: int = 0) -> list[object]:
    """JSON values of type `hint`: one per union member and literal, and per optional key of a TypedDict."""
    if depth > 10:
        return ["x"]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _WRAPPERS:
        return examples(args[0], depth)
    if origin in (Union, types.UnionType):
        return _unique(v for arg in args if arg is not type(None) for v in examples(arg, depth + 1)) or [None]
    if origin is Literal:
        return list(args)
    if is_typeddict(hint):
        return _typed_dict_examples(hint, depth)
    if hint in (str, object, Any):
        return ["x"]
    if hint is bool:
        return [True]
    if hint is int:
        return [1]
    if hint is float:
        return [0.5]
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        value_hint = args[1] if args else str
        return [{"x": examples(value_hint, depth + 1)[0]}]
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence) or _is_sequence_not_str(origin):
        return [[item] for item in examples(args[0], depth + 1)]
    return ["x"]


def _typed_dict_examples(typed_dict: type, depth: int) -> list[dict]:
    hints = typing.get_type_hints(typed_dict)
    required = required_keys(typed_dict)
    base = {k: examples(hints[k], depth + 1)[0] for k in sorted(required)}
    if depth > 2:
        return [base]
    optional = sorted(set(hints) - required)
    return [base, *({**base, k: v} for k in optional for v in examples(hints[k], depth + 1)[:2])]


def _is_sequence_not_str(origin: object) -> bool:
    return getattr(origin, "__name__", "") == "SequenceNotStr"


def _unique(values) -> list[object]:
    seen, out = set(), []
    for value in values:
        key = json.dumps(value, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out

"""OpenAI field coverage: every field the installed openai client defines is in lerpray/serve/fields.py's list for its
endpoint, and a request carrying it (every example value built from the client's types) is either accepted or
refused with a 400 that names it: never "unknown field", never a 500. The HTTP twin is in
tests/integration/http_api/test_serve_api.py."""

from __future__ import annotations

import json
from pathlib import Path

import openai_fields
import pytest
from pydantic import ValidationError

from lerpray.mixing import AnchorLayout
from lerpray.serve import fields
from lerpray.serve.config import ServeArgs
from lerpray.serve.errors import ApiError, to_api_error
from lerpray.serve.protocol import generation_request, mix_context
from lerpray.serve.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest

pytestmark = pytest.mark.unit

LAYOUT = AnchorLayout(anchors=("s.pos", "s.neg"), attributes={"s": ("s.neg", "s.pos")})
SCHEMAS = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest}
TABLES = {"/v1/completions": fields.COMPLETIONS, "/v1/chat/completions": fields.CHAT}
EXTENSIONS = {"interpolation", "top_k", "min_tokens"}
VOCAB = 1000
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("path", list(SCHEMAS))
def test_every_openai_field_is_listed(path):
    names = set(openai_fields.field_names(openai_fields.request_types()[path]))
    table = TABLES[path]
    assert names - set(table) == set(), "add these to lerpray/serve/fields.py"
    assert set(table) - names == EXTENSIONS, "fields.py lists fields the openai client does not define"
    assert {n for n, rule in table.items() if rule.kind is fields.Kind.EXTENSION} == EXTENSIONS


def test_every_message_field_is_listed():
    assert set(openai_fields.message_field_names()) == set(fields.MESSAGE)


@pytest.mark.parametrize(("schema", "table"), [(CompletionRequest, fields.COMPLETIONS),
                                               (ChatCompletionRequest, fields.CHAT), (ChatMessage, fields.MESSAGE)])
def test_schemas_declare_exactly_the_listed_fields(schema, table):
    assert set(schema.model_fields) == set(table)
    for name, rule in table.items():
        if rule.kind in (fields.Kind.NOT_YET, fields.Kind.REFUSED):
            assert None in rule.neutral, f"{name}: null must stay accepted (clients send it for 'unset')"


def outcome(path: str, field: str, value: object) -> tuple[int, dict | None]:
    """(status, error body) of a request with `field` set to `value`, through the schema and the server's policy."""
    body = {**openai_fields.BASE_BODIES[path], field: value}
    try:
        parsed = SCHEMAS[path].model_validate_json(json.dumps(body))
        args = ServeArgs(anchors="x")
        generation_request(parsed, args, mix_context(args, LAYOUT), vocab_size=VOCAB)
    except (ValidationError, ValueError, ApiError) as err:
        api = to_api_error(err)
        return api.status, api.json()["error"]
    return 200, None


def names_field(error: dict, field: str) -> bool:
    param = error["param"] or ""
    return param == field or param.startswith((f"{field}.", f"{field}["))


@pytest.mark.parametrize(("path", "field", "value"), openai_fields.as_params(openai_fields.variants()))
def test_every_openai_field_is_accepted_or_refused_by_name(path, field, value):
    status, error = outcome(path, field, value)
    if status == 200:
        return
    if field == "model":  # an id this server does not serve (e.g. "gpt-4o")
        assert (status, error["param"], error["code"]) == (404, "model", "model_not_found")
        return
    assert status == 400, error
    assert error["code"] != "unknown_field", error
    assert names_field(error, field), error


@pytest.mark.parametrize(
    ("path", "field", "value", "accepted"),
    [
        ("/v1/chat/completions", "response_format", {"type": "text"}, True),
        ("/v1/chat/completions", "response_format", {"type": "json_object"}, False),
        ("/v1/chat/completions", "tools", [], True),
        ("/v1/chat/completions", "tool_choice", "none", True),
        ("/v1/chat/completions", "tool_choice", "auto", False),
        ("/v1/chat/completions", "metadata", {"team": "a"}, True),
        ("/v1/chat/completions", "metadata", {"team": 1}, False),  # ignored, but still typed
        ("/v1/chat/completions", "parallel_tool_calls", True, True),
        ("/v1/chat/completions", "modalities", ["text"], True),
        ("/v1/chat/completions", "modalities", ["text", "audio"], False),
        ("/v1/chat/completions", "stream_options", {"include_usage": True, "include_obfuscation": False}, True),
        ("/v1/chat/completions", "max_completion_tokens", 5, True),
        ("/v1/chat/completions", "logprobs", True, True),
        ("/v1/chat/completions", "top_logprobs", 2, False),  # without logprobs: true
        ("/v1/chat/completions", "top_logprobs", 0, True),
        ("/v1/chat/completions", "n", 3, True),
        ("/v1/chat/completions", "n", 33, False),  # more than the server's max_batch_size (32)
        ("/v1/completions", "n", 2, True),
        ("/v1/completions", "best_of", 1, True),
        ("/v1/completions", "best_of", 2, False),  # n is 1
        ("/v1/completions", "logprobs", 5, True),
        ("/v1/completions", "echo", True, True),
        ("/v1/completions", "max_tokens", 0, False),  # without echo
        ("/v1/chat/completions", "max_tokens", 0, False),
        ("/v1/completions", "presence_penalty", -2, True),
        ("/v1/completions", "frequency_penalty", 0.5, True),
        ("/v1/completions", "logit_bias", {"50": -100}, True),
        ("/v1/completions", "logit_bias", {"50256": -100}, False),  # past the test vocabulary (1000 tokens)
        ("/v1/completions", "suffix", "end", False),
        ("/v1/completions", "prompt", ["a", "b"], True),
    ],
)
def test_neutral_values_pass_and_others_are_refused(path, field, value, accepted):
    status, error = outcome(path, field, value)
    assert (status == 200) is accepted, error
    assert accepted or names_field(error, field), error


def test_refusals_say_what_is_not_supported_and_what_to_do():
    _, error = outcome("/v1/chat/completions", "response_format", {"type": "json_schema", "json_schema": {}})
    assert error["code"] == "unsupported_value"
    assert "JSON mode" in error["message"] and 'set it to {"type": "text"}' in error["message"]
    _, error = outcome("/v1/completions", "best_of", 3)
    assert "set best_of equal to n" in error["message"]
    _, error = outcome("/v1/completions", "logit_bias", {"7": 1, "4000": 2})
    assert (error["param"], error["code"]) == ("logit_bias.4000", "invalid_value")
    assert "not in the vocabulary (ids 0 to 999)" in error["message"]


def test_max_completion_tokens_is_honoured():
    body = {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 7}
    request = generation_request(ChatCompletionRequest.model_validate(body), ServeArgs(anchors="x"),
                                 mix_context(ServeArgs(anchors="x"), LAYOUT))
    assert request.sampling.max_tokens == 7


def test_min_tokens_is_honoured_and_must_fit_in_max_tokens():
    args = ServeArgs(anchors="x")
    body = {"prompt": "x", "max_tokens": 9, "min_tokens": 9}
    assert generation_request(CompletionRequest.model_validate(body), args,
                              mix_context(args, LAYOUT)).sampling.min_tokens == 9
    with pytest.raises(ApiError, match="min_tokens: is 10 but max_tokens is 9") as refused:
        generation_request(CompletionRequest.model_validate({**body, "min_tokens": 10}), args, mix_context(args, LAYOUT))
    assert (refused.value.status, refused.value.body.error.param) == (400, "min_tokens")


@pytest.mark.parametrize(
    ("message", "param", "fragment"),
    [
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "messages[0].content[0]",
         "only text parts"),
        ({"role": "tool", "content": "x", "tool_call_id": "a"}, "messages[0].role", "tool messages"),
        ({"role": "assistant", "tool_calls": [{"id": "a"}]}, "messages[0].tool_calls", "not supported"),
        ({"role": "user"}, "messages[0]", "needs content"),
    ],
)
def test_message_fields_are_refused_by_name(message, param, fragment):
    status, error = outcome("/v1/chat/completions", "messages", [message])
    assert (status, error["param"]) == (400, param), error
    assert fragment in error["message"]


def test_assistant_message_without_content_is_accepted():
    messages = [{"role": "assistant", "content": None, "refusal": "no", "tool_calls": []}, {"role": "user", "content": "x"}]
    parsed = ChatCompletionRequest.model_validate({"messages": messages})
    assert parsed.messages[0].as_template_message() == {"role": "assistant", "content": ""}


def test_readme_shows_the_coverage_table():
    assert fields.coverage_table() in README.read_text(), "paste fields.coverage_table() into README.md"

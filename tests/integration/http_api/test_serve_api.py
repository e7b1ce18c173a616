"""The OpenAI-compatible API on a real Ray Serve (127.0.0.1, a free port) with a tiny Llama and a real anchor set.

The package's one app (app.py) serves every test. Outputs are compared with an in-process `Engine` loaded from the
same anchor set: same prompt, mix and seed -> same text and token counts.
"""

from __future__ import annotations

import json

import httpx
import openai
import openai_fields
import pytest

from lerpray.anchors import open_store, read_manifest
from lerpray.mixing import resolve_mix
from lerpray.model import Engine, GenerationRequest, SamplingParams

from .app import BODY_LIMIT, CAP, KEY, MIX, PRESETS

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell me about cats."}]


def local(engine: Engine, *, prompt=None, messages=None, mix=MIX, seed=7, max_tokens=16, temperature=1.0):
    """What the in-process engine generates for the same request."""
    request = GenerationRequest(
        coeffs=resolve_mix(mix, engine.layout),
        prompt=prompt,
        messages=messages,
        sampling=SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed),
    )
    return engine.generate([request])[0]


def sse_payloads(response: httpx.Response) -> list:
    lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


def test_healthz_needs_no_key(base_url):
    response = httpx.get(f"{base_url}/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_models_lists_the_anchor_set(http, anchors):
    manifest = read_manifest(open_store(anchors))
    card, *presets = http.get("/v1/models").json()["data"]
    assert card["id"] == "lerpray" and card["parent"] is None
    assert card["fingerprint"] == f"v{manifest.version}-" + card["fingerprint"].split("-")[1]
    assert [(p["id"], p["parent"], p["interpolation"]) for p in presets] == [
        (name, "lerpray", mix) for name, mix in PRESETS.items()]
    assert card["anchors"] == [a.name for a in manifest.anchors]
    assert card["attributes"] == {"sentiment": {"high": "positive", "low": "negative"},
                                  "formality": {"high": "formal", "low": "informal"}}
    assert card["base_model"]["checksum"] == manifest.base_model.checksum
    assert card["extrapolation"] == {"alpha_min": -1.0, "alpha_max": 2.0, "weight_min": -1.0, "weight_max": 2.0}


def test_completion_equals_in_process_engine(http, engine):
    body = {"model": "lerpray", "prompt": "Once upon a time", "max_tokens": 16, "seed": 7, "interpolation": MIX}
    reply = http.post("/v1/completions", json=body).json()
    expected = local(engine, prompt="Once upon a time")
    assert reply["object"] == "text_completion"
    assert reply["choices"][0]["text"] == expected.text
    assert reply["choices"][0]["finish_reason"] == expected.finish_reason
    assert reply["usage"] == {"prompt_tokens": expected.prompt_tokens, "completion_tokens": expected.completion_tokens,
                              "total_tokens": expected.prompt_tokens + expected.completion_tokens}
    assert reply["interpolation"] == dict(zip(engine.layout.anchors, resolve_mix(MIX, engine.layout), strict=True))


def test_mix_changes_the_output(http):
    def text(alpha: float) -> str:
        body = {"prompt": "abc", "max_tokens": 24, "temperature": 0.0, "interpolation": {"alpha": {"sentiment": alpha}}}
        return http.post("/v1/completions", json=body).json()["choices"][0]["text"]

    assert text(0.0) != text(1.0)


def test_chat_equals_in_process_engine(http, engine):
    body = {"messages": MESSAGES, "max_completion_tokens": 16, "seed": 3, "interpolation": MIX}
    reply = http.post("/v1/chat/completions", json=body).json()
    expected = local(engine, messages=MESSAGES, seed=3)
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": expected.text}
    assert reply["usage"]["completion_tokens"] == expected.completion_tokens


def test_streamed_completion_is_the_same_text(http, engine):
    body = {"prompt": "Once upon a time", "max_tokens": 16, "seed": 7, "interpolation": MIX, "stream": True,
            "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    *text_chunks, usage_chunk = chunks
    expected = local(engine, prompt="Once upon a time")
    assert "".join(c["choices"][0]["text"] for c in text_chunks) == expected.text
    assert text_chunks[-1]["choices"][0]["finish_reason"] == expected.finish_reason
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == expected.completion_tokens


def test_streamed_chat_opens_with_the_role(http):
    body = {"messages": MESSAGES, "max_tokens": 8, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        payloads = sse_payloads(response)
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_openai_client(base_url, engine):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["lerpray", *PRESETS]
    completion = client.completions.create(
        model="lerpray", prompt="Once upon a time", max_tokens=16, seed=7, extra_body={"interpolation": MIX}
    )
    assert completion.choices[0].text == local(engine, prompt="Once upon a time").text
    stream = client.chat.completions.create(
        model="lerpray", messages=MESSAGES, max_tokens=16, seed=3, stream=True,
        stream_options={"include_usage": True}, extra_body={"interpolation": MIX},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = local(engine, messages=MESSAGES, seed=3)
    assert streamed == expected.text
    assert chunks[-1].usage.completion_tokens == expected.completion_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="lerpray", prompt="x", extra_body={"interpolation": {"alpha": {"nope": 1}}})
    assert err.value.body["param"] == "interpolation.alpha.nope"


@pytest.mark.parametrize(
    ("headers", "message"),
    [({}, "missing API key"), ({"Authorization": "Bearer wrong"}, "incorrect API key"),
     ({"Authorization": f"Basic {KEY}"}, "incorrect API key")],
)
def test_auth(base_url, headers, message):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions")):
        response = httpx.request(method, f"{base_url}{path}", headers=headers, json={"prompt": "x"})
        assert response.status_code == 401
        assert message in response.json()["error"]["message"]


BAD_REQUESTS = [
    # (path, body, status, param, code)
    ("/v1/completions", b'{"prompt": "x",', 400, None, "invalid_json"),
    ("/v1/completions", b"[1, 2]", 400, None, "invalid_type"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens", "invalid_type"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt", "invalid_type"),
    ("/v1/completions", {"max_tokens": 5}, 400, "prompt", "missing_field"),
    ("/v1/completions", {"prompt": "x", "temprature": 0.5}, 400, "temprature", "unknown_field"),
    ("/v1/completions", {"prompt": "x", "n": 2, "best_of": 3}, 400, "best_of", "invalid_value"),
    ("/v1/chat/completions", {"messages": MESSAGES, "tools": [{"type": "function"}]}, 400, "tools",
     "unsupported_value"),
    ("/v1/completions", {"prompt": "x", "model": "lerpray:sentiment=2"}, 400, "model", "invalid_interpolation"),
    ("/v1/completions", {"prompt": "x", "model": "lerpray:sentiment"}, 400, "model", "invalid_interpolation"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature", "invalid_value"),
    ("/v1/completions", {"prompt": "x", "interpolation": [0.5]}, 400, "interpolation", "invalid_interpolation"),
    ("/v1/completions", {"prompt": "x", "interpolation": {"lambda": {"sentiment": 1.0}}}, 400, "interpolation.alpha",
     "invalid_interpolation"),
    ("/v1/completions", {"prompt": "x", "interpolation": {"anchors": {"sentiment.positive": 0.5}}}, 400,
     "interpolation.anchors", "invalid_interpolation"),
    ("/v1/completions", {"prompt": "x", "interpolation": {"alpha": {"sentiment": 1.5}}}, 400,
     "interpolation.alpha.sentiment", "invalid_interpolation"),  # extrapolation without opting in
    ("/v1/completions", {"prompt": "x", "interpolation": {"alpha": {"sentiment": 2.5}, "extrapolate": True}}, 400,
     "interpolation.alpha.sentiment", "invalid_interpolation"),  # past the server's bounds
    ("/v1/completions", {"prompt": "y" * 600}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"prompt": "x", "max_tokens": CAP + 1}, 400, "max_tokens", "invalid_value"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role",
     "invalid_value"),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 4, "max_completion_tokens": 4}, 400, None,
     "invalid_value"),
    ("/v1/completions", {"prompt": "x" * BODY_LIMIT}, 413, None, "body_too_large"),
    ("/v1/nothing-here", {"prompt": "x"}, 404, None, "not_found"),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), BAD_REQUESTS)
def test_bad_input_gets_openai_error(http, path, body, status, param, code):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code), error
    assert error["message"]


def test_bad_stream_request_fails_before_streaming(http):
    body = {"prompt": "x", "stream": True, "interpolation": {"alpha": {"sentiment": 7}}}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "interpolation.alpha.sentiment"


def completion_text(http, **body) -> dict:
    response = http.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 12, "seed": 5, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_presets_and_inline_mixes_are_model_ids(http):
    """A preset id, an inline mix and the same `interpolation` give the same text; the reply names the model id."""
    by_body = completion_text(http, interpolation=MIX)
    by_preset = completion_text(http, model="lerpray-mix")
    inline = "lerpray:sentiment=0.8,formality=0.3;lambda:sentiment=0.6,formality=0.4"
    by_inline = completion_text(http, model=inline)
    assert by_preset["choices"][0]["text"] == by_inline["choices"][0]["text"] == by_body["choices"][0]["text"]
    assert by_preset["interpolation"] == by_inline["interpolation"] == by_body["interpolation"]
    assert (by_preset["model"], by_inline["model"], by_body["model"]) == ("lerpray-mix", inline, "lerpray")
    assert by_body["system_fingerprint"] == http.get("/v1/models").json()["data"][0]["fingerprint"]


def test_interpolation_overrides_a_preset(http):
    overridden = completion_text(http, model="lerpray-upbeat", interpolation=MIX)
    assert overridden["interpolation"] == completion_text(http, interpolation=MIX)["interpolation"]
    assert overridden["model"] == "lerpray-upbeat"


def test_every_openai_field_over_http(http):
    """Every field of the openai client's request types (each example value built from them): accepted, or a 400
    naming the field; never a 500 and never "unknown field". The unit twin: tests/unit/test_serve_fields.py."""
    refused = 0
    for path, field, value in openai_fields.variants():
        short = {} if field == "max_completion_tokens" else {"max_tokens": 2}  # the two may not come together
        response = http.post(path, json={**openai_fields.BASE_BODIES[path], **short, field: value})
        if response.status_code == 200:
            continue
        error = response.json()["error"]
        if field == "model":
            assert (response.status_code, error["param"]) == (404, "model"), error
            continue
        refused += 1
        assert response.status_code == 400, (field, value, error)
        assert error["code"] != "unknown_field", (field, value, error)
        assert error["param"] == field or error["param"].startswith((f"{field}.", f"{field}[")), (field, error)
    assert refused > 20  # the neutral-only and refused fields


def test_playground_is_served_without_a_key(base_url):
    page = httpx.get(f"{base_url}/playground")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="playground/playground.js"' in page.text
    for name, kind in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        asset = httpx.get(f"{base_url}/playground/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    missing = httpx.get(f"{base_url}/playground/secrets.txt")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

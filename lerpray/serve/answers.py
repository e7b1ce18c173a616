"""One OpenAI request from its HTTP body to its answer, shared by the one-deployment app (deployment.py) and the
multiplexed app (router.py in front of multiplexed.py).

`authorize` and `read_body` police the HTTP request at the ingress; `parse` validates the body; `prepare` makes its
engine requests on the set that serves it, and `answer` runs them. An `Answer` is plain data (a status, headers, and a JSON body or the server-sent events of a
stream), so a model replica can hand it over a DeploymentHandle; the ingress makes it a response (`to_response`).
Every failure is an OpenAI error (lerpray.serve.errors) with the same status and message in both apps.
"""

# No `from __future__ import annotations`: FastAPI reads the handler's annotations (Request) at runtime.
import asyncio
import hmac
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lerpray.serve import errors, protocol, replies
from lerpray.serve.live import LiveSet
from lerpray.serve.metrics import ServeMetrics
from lerpray.serve.responses import ModelList
from lerpray.serve.schemas import ChatCompletionRequest, CompletionRequest

__all__ = ["Answer", "answer", "api_key", "authorize", "failure", "http_error", "model_list", "parse", "prepare",
           "read_body", "to_response"]


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict | None = None  # the JSON reply or error; None for a stream
    stream: AsyncIterator[str] | None = None  # server-sent events: "data: {...}\n\n" lines, then "data: [DONE]"


def api_key(env_var: str | None) -> bytes | None:
    """The API key requests must carry (from the environment variable `api_key_env` names); None: no auth."""
    if env_var is None:
        return None
    key = os.environ.get(env_var, "")
    if not key:
        raise ValueError(
            f"api_key_env is {env_var!r} but that environment variable is empty on this replica; set it "
            "(e.g. runtime_env.env_vars in the Serve config) or remove api_key_env to serve without auth"
        )
    return key.encode()


def authorize(request: Request, key: bytes | None) -> None:
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(given, key):
        raise errors.unauthorized(header_present=bool(header))


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over `limit` bytes without buffering it all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise errors.body_too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse(body: bytes, route: str) -> CompletionRequest | ChatCompletionRequest:
    """The body validated for `route` ("completions" or "chat"); pydantic's ValidationError else."""
    schema = ChatCompletionRequest if route == "chat" else CompletionRequest
    return schema.model_validate_json(body)


def failure(err: Exception, route: str, metrics: ServeMetrics, headers: dict[str, str] | None = None) -> Answer:
    """The OpenAI error answer for `err` (counted by route and status)."""
    api_error = errors.to_api_error(err, prompt_field=_prompt_field(route))
    metrics.on_error(route, api_error.status)
    return Answer(api_error.status, {**api_error.headers, **(headers or {})}, api_error.json())


async def prepare(served: LiveSet, parsed: Any) -> list:
    """The engine requests of a parsed request on `served` (one per prompt), its mix resolved once; raises the
    request's error (a 4xx once mapped by `failure`)."""
    if served.calibration_due():  # a thread for the store read only when one is due, not per request
        await asyncio.to_thread(served.refresh_calibration)
    return protocol.generation_requests(parsed, served.args, served.mixes, served.vocab_size)


async def answer(served: LiveSet, parsed: Any, gens: list, route: str, metrics: ServeMetrics) -> Answer:
    """Run a request's engine requests (`prepare`) on `served` (its anchor-set version to the end, even if another is
    swapped in meanwhile), their choices merged in one reply."""
    events = served.batcher.submit(*gens)
    streaming = False
    try:
        first = await anext(events)  # queue-full and per-request engine errors surface here, before headers
        model = parsed.model or served.args.model_name
        reply = replies.Reply(route, gens, model, served.mixes.layout.anchors, served.fingerprint,
                              echo=bool(getattr(parsed, "echo", False)), tokens=served.tokens)
        resolved = gens[0].mix.report  # the one resolution of the request's mix (targets -> alphas), as JSON
        headers = {**served.headers(), **replies.mix_headers(resolved)}
        if parsed.stream:
            streaming = True  # the SSE generator owns `events` from here on
            return Answer(200, headers, stream=_sse(reply, first, events, parsed.include_usage(), metrics))
        async for batch in _chain(first, events):
            for event in batch:
                reply.add(event)
        return Answer(200, headers, {**reply.response(), "resolved_mix": resolved})
    except Exception as err:  # noqa: BLE001
        return failure(err, route, metrics, served.headers())
    finally:
        if not streaming:  # also on cancellation (client gone): frees the request's batch slot
            await events.aclose()


def model_list(request: Request, key: bytes | None, cards: list, metrics: ServeMetrics) -> Response:
    """GET /v1/models: `cards` (ModelCards or their dicts) once the request is authorized."""
    metrics.on_request("models")
    try:
        authorize(request, key)
    except errors.ApiError as err:
        return to_response(failure(err, "models", metrics))
    return JSONResponse(ModelList(data=cards).model_dump())


def to_response(done: Answer) -> Response:
    if done.stream is not None:
        return StreamingResponse(done.stream, status_code=done.status, media_type="text/event-stream",
                                 headers=done.headers)  # fmt: skip
    return JSONResponse(done.body, status_code=done.status, headers=done.headers)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes and methods get OpenAI's error shape too (the ingress apps' exception handler)."""
    if exc.status_code == 404:
        err = errors.not_found(request.url.path)
    else:
        err = errors.ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
    return JSONResponse(err.json(), status_code=err.status, headers=err.headers)


def sse_line(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _prompt_field(route: str) -> str:
    return "messages" if route == "chat" else "prompt"


async def _chain(first: list, rest: AsyncIterator[list]) -> AsyncIterator[list]:
    """The batcher's event lists, the first one already awaited (`rest` ends after the last choice's finish)."""
    yield first
    async for events in rest:
        yield events


async def _sse(reply: replies.Reply, first: list, events: AsyncIterator, include_usage: bool,
               metrics: ServeMetrics) -> AsyncIterator[str]:  # fmt: skip
    try:
        for chunk in reply.opening_chunks():
            yield sse_line(chunk)
        async for batch in _chain(first, events):
            lines = "".join(sse_line(c) for c in map(reply.add, batch) if c is not None)
            if lines:
                yield lines
        if include_usage:
            yield sse_line(reply.usage_chunk())
        yield "data: [DONE]\n\n"
    except Exception as err:  # noqa: BLE001 -- headers are gone: report in-band, as OpenAI does
        api_error = errors.to_api_error(err)
        metrics.on_error(reply.route, api_error.status)
        yield sse_line(api_error.json())
    finally:
        await events.aclose()

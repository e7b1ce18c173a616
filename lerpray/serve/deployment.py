"""The Serve deployment: a thin shim between HTTP and the engine (cf. Ray Serve LLM's `LLMServer`).

Its duties: (1) load the engine and the anchor set's manifest at start, and check the config's presets against
it, (2) authenticate and parse requests into engine requests (`lerpray.serve.protocol`), (3) hand them to the
continuous batcher, (4) answer in OpenAI's shapes, streaming as server-sent events, with every failure mapped by
`lerpray.serve.errors`; it also serves the playground page (`lerpray.serve.playground`). It takes an
`engine_factory` so tests can inject an engine; the default loads `Engine.from_uri`.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations (Request) at runtime, and Serve
# pickles this class by value, so string annotations would not resolve on the replica.
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from lerpray.serve import errors, playground, protocol, steer
from lerpray.serve.batcher import Batcher, EngineLike
from lerpray.serve.config import ServeArgs
from lerpray.serve.metrics import ServeMetrics
from lerpray.serve.responses import ModelList
from lerpray.serve.schemas import ChatCompletionRequest, CompletionRequest

__all__ = ["LerpServer", "load_engine"]

EngineFactory = Callable[[ServeArgs], EngineLike]

logger = logging.getLogger(__name__)

api = FastAPI(title="lerpray", description="OpenAI-compatible interpolated generation", docs_url=None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes and methods get OpenAI's error shape too."""
    if exc.status_code == 404:
        err = errors.not_found(request.url.path)
    else:
        err = errors.ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
    return JSONResponse(err.json(), status_code=err.status, headers=err.headers)


def load_engine(args: ServeArgs) -> EngineLike:
    """The real engine: base model + anchor set from `args.anchors`, checksums verified on load."""
    import torch

    from lerpray.model.engine import Engine

    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    return Engine.from_uri(
        args.anchors,
        args.base_model,
        dtype=getattr(torch, args.dtype),
        device=args.device,
        max_batch_size=args.max_batch_size,
    )


def _start_engine(factory: EngineFactory, args: ServeArgs) -> EngineLike:
    """`factory(args)`, retried with exponential backoff (1 s doubling to 30 s) while the anchor store fails (endpoint
    down, throttled, 5xx) for up to `args.store_retry_s`; then a StoreError saying so, which `serve status` shows
    before Serve starts another replica. Anything else (a corrupt set, no set at the URI) fails at once."""
    from lerpray.anchors import ObjectNotFound, StoreError

    started, delays = time.monotonic(), []
    while True:
        try:
            return factory(args)
        except ObjectNotFound:
            raise
        except StoreError as err:
            delay, waited = min(2.0 ** len(delays), 30.0), time.monotonic() - started
            if waited + delay > args.store_retry_s:
                retried = ", ".join(f"{d:g}" for d in delays) or "no"
                raise StoreError(
                    f"the anchor store still fails after {len(delays) + 1} attempts in {waited:.0f} s (retried after "
                    f"{retried} s): {err}. This replica gives up and Serve starts another; raise store_retry_s to "
                    "wait longer"
                ) from err
            logger.warning("anchor store failed (attempt %d, retrying in %g s): %s", len(delays) + 1, delay, err)
            time.sleep(delay)
            delays.append(delay)


def _api_key(env_var: str | None) -> bytes | None:
    if env_var is None:
        return None
    key = os.environ.get(env_var, "")
    if not key:
        raise ValueError(
            f"api_key_env is {env_var!r} but that environment variable is empty on this replica; set it "
            "(e.g. runtime_env.env_vars in the Serve config) or remove api_key_env to serve without auth"
        )
    return key.encode()


async def _read_body(request: Request, limit: int) -> bytes:
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


async def _chain(first: list, rest: AsyncIterator[list]) -> AsyncIterator[list]:
    """The batcher's event lists, the first one already awaited."""
    yield first
    if first[-1].finish_reason is None:
        async for events in rest:
            yield events


def _sse_line(payload: dict) -> str:
    import json

    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


# Serve pickles the class when it is decorated: every module-level name it uses must be defined above it.
@serve.deployment(
    name="LerpServer",
    # Backpressure defaults; cluster/serve.yaml (the `deployments:` block) overrides them, with autoscaling.
    max_ongoing_requests=64,
    max_queued_requests=128,
    backpressure_config={"retry_after_s": 1},  # Serve's own 503s (max_queued_requests reached) carry Retry-After
    health_check_period_s=5,
    health_check_timeout_s=30,
)
@serve.ingress(api)
class LerpServer:
    def __init__(self, args: dict[str, Any] | ServeArgs, engine_factory: EngineFactory | None = None) -> None:
        self.args = ServeArgs.model_validate(args)
        self._api_key = _api_key(self.args.api_key_env)
        self.engine = _start_engine(engine_factory or load_engine, self.args)
        protocol.preset_coeffs(self.args, self.engine.layout)  # a preset that does not fit the set fails the start
        self.cards = protocol.model_cards(self.args, self.engine.layout, self.engine.context_length)
        self.metrics = ServeMetrics()
        self.batcher = Batcher(
            self.engine,
            max_batch_size=self.args.max_batch_size,
            max_queue=self.args.max_queue,
            retry_after_s=self.args.retry_after_s,
            observer=self.metrics,
        )
        self.batcher.start()

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and Serve replaces it."""
        problem = self.batcher.healthy()
        if problem:
            raise RuntimeError(problem)

    def __del__(self) -> None:
        if hasattr(self, "batcher"):
            self.batcher.close()

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        problem = self.batcher.healthy()
        in_flight, waiting = self.batcher.load()
        body = {"status": problem or "ok", "in_flight": in_flight, "waiting": waiting}
        return JSONResponse(body, status_code=503 if problem else 200)

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        self.metrics.on_request("models")
        try:
            self._authorize(request)
        except errors.ApiError as err:
            return self._error(err, "models")
        return JSONResponse(ModelList(data=self.cards).model_dump())

    @api.get("/playground")
    async def playground_page(self) -> Response:
        return playground.asset("index.html")

    @api.get("/playground/{name}")
    async def playground_asset(self, name: str) -> Response:
        return playground.asset(name)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completions")

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def _generate(self, request: Request, route: str) -> Response:
        self.metrics.on_request(route)
        prompt_field = "messages" if route == "chat" else "prompt"
        try:
            parsed, gen = await self._parse(request, route)
        except Exception as err:  # noqa: BLE001 -- every failure becomes an OpenAI error response
            return self._error(errors.to_api_error(err, prompt_field=prompt_field), route)
        events = self.batcher.submit(gen)
        streaming = False
        try:
            first = await anext(events)  # queue-full and per-request engine errors surface here, before headers
            model = parsed.model or self.args.model_name
            fingerprint = self.cards[0].fingerprint
            reply = protocol.Reply(route, gen.request_id, model, gen.coeffs, self.engine.layout, fingerprint)
            steering = steer.request_steering(parsed, self.args, self.engine.layout, gen.sampling.max_tokens)
            headers = steer.mix_headers(steering)  # the resolved mix (issue 18)
            if parsed.stream:
                streaming = True  # the SSE generator owns `events` from here on
                sse = self._sse(reply, first, events, parsed.include_usage())
                return StreamingResponse(sse, media_type="text/event-stream", headers=headers)
            async for batch in _chain(first, events):
                for event in batch:
                    reply.add(event)
            return JSONResponse({**reply.response(), "resolved_mix": steering.resolved}, headers=headers)
        except Exception as err:  # noqa: BLE001
            return self._error(errors.to_api_error(err, prompt_field=prompt_field), route)
        finally:
            if not streaming:  # also on cancellation (client gone): frees the request's batch slot
                await events.aclose()

    async def _parse(self, request: Request, route: str) -> tuple[Any, Any]:
        """Authenticate, read and validate the body, apply the server's policy: (parsed body, engine request)."""
        self._authorize(request)
        body = await _read_body(request, self.args.max_body_bytes)
        schema = ChatCompletionRequest if route == "chat" else CompletionRequest
        parsed = schema.model_validate_json(body)
        return parsed, protocol.generation_request(parsed, self.args, self.engine.layout)

    async def _sse(self, reply: protocol.Reply, first, events: AsyncIterator, include_usage: bool) -> AsyncIterator[str]:
        try:
            for chunk in reply.opening_chunks():
                yield _sse_line(chunk)
            async for batch in _chain(first, events):
                lines = "".join(_sse_line(c) for c in map(reply.add, batch) if c is not None)
                if lines:
                    yield lines
            if include_usage:
                yield _sse_line(reply.usage_chunk())
            yield "data: [DONE]\n\n"
        except Exception as err:  # noqa: BLE001 -- headers are gone: report in-band, as OpenAI does
            api_error = errors.to_api_error(err)
            self.metrics.on_error(reply.route, api_error.status)
            yield _sse_line(api_error.json())
        finally:
            await events.aclose()

    def _authorize(self, request: Request) -> None:
        if self._api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(given, self._api_key):
            raise errors.unauthorized(header_present=bool(header))

    def _error(self, err: errors.ApiError, route: str) -> JSONResponse:
        self.metrics.on_error(route, err.status)
        return JSONResponse(err.json(), status_code=err.status, headers=err.headers)


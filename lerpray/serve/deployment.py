"""The Serve deployment: a thin shim between HTTP and the engine (cf. Ray Serve LLM's `LLMServer`).

Its duties: (1) load the engine and the anchor set's manifest at start (the sets of `sets` on the main set's base
model share its engine, lerpray.serve.shared_sets; a set on another base gets its own),
check the config's presets against it, and roll to another version when Serve's `user_config` changes (`reconfigure`:
the new version loads beside the old, which finishes its requests; a version that fails to load is refused and the
old one keeps serving; see lerpray.serve.live), (2) authenticate and parse requests into engine requests
(`lerpray.serve.protocol`), (3) hand them to the
continuous batcher, (4) answer in OpenAI's shapes, streaming as server-sent events, with every failure mapped by
`lerpray.serve.errors`, every answer carrying the answering version (header x-lerpray-anchor-version and
`system_fingerprint`); it also serves the playground page (`lerpray.serve.playground`). It takes an
`engine_factory` so tests can inject an engine (and `shared_factory` for the engine of sets sharing a base; none
with an injected `engine_factory`: each set its own); the defaults are lerpray.model.loading's.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations (Request) at runtime, and Serve
# pickles this class by value, so string annotations would not resolve on the replica.
import asyncio
import hmac
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from lerpray.serve import errors, live, playground, protocol, replies, shared_sets
from lerpray.serve.config import ServeArgs
from lerpray.serve.live import EngineFactory, LiveSet, serve_engine
from lerpray.serve.metrics import ServeMetrics
from lerpray.serve.responses import ModelList
from lerpray.serve.schemas import ChatCompletionRequest, CompletionRequest
from lerpray.serve.shared_sets import SharedFactory, serve_shared_engine

__all__ = ["EngineFactory", "LerpServer", "serve_engine"]

RECONFIGURABLE = ("anchors", "sets")  # the user_config keys: which anchor-set version each model id serves

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
    """The batcher's event lists, the first one already awaited (`rest` ends after the last choice's finish)."""
    yield first
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
    def __init__(self, args: dict[str, Any] | ServeArgs, engine_factory: EngineFactory | None = None,
                 shared_factory: SharedFactory | None = None) -> None:  # fmt: skip
        self.args = ServeArgs.model_validate(args)
        self._api_key = _api_key(self.args.api_key_env)
        self.factory = engine_factory or serve_engine
        self.shared_factory = shared_factory or (serve_shared_engine if engine_factory is None else None)
        self.metrics = ServeMetrics()
        # model id -> what it serves (LiveSets of one base model share an engine); replaced whole by reconfigure
        self.sets: dict[str, LiveSet] = shared_sets.load_sets(live.set_args(self.args), {}, self.factory,
                                                              self.metrics, self.shared_factory)  # fmt: skip
        self.reload_error: str | None = None
        self._reconfigured = False
        self._retiring: set[asyncio.Task] = set()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's `user_config` changed (or the replica started with one): serve the anchor-set versions it names.

        Each model id whose resolved version differs loads beside the old one (in a thread: requests keep flowing),
        then all swap at once. If any fails to load, nothing swaps: at start-up the replica fails; later the old
        versions keep serving and the error is logged and shown by /healthz.
        """
        if unknown := sorted(set(user_config) - set(RECONFIGURABLE)):
            raise ValueError(f"user_config: {unknown} cannot change at run time; only {list(RECONFIGURABLE)} can")
        first, self._reconfigured = not self._reconfigured, True
        wanted = ServeArgs.model_validate({**self.args.model_dump(mode="json", by_alias=True), **user_config})
        try:
            new = await asyncio.to_thread(self._load_changed, wanted)
        except Exception as err:
            if first:
                raise
            self.reload_error = f"{type(err).__name__}: {err}"
            logger.error("anchor-set change refused, still serving %s: %s", self.versions(), self.reload_error)
            return
        old, self.sets, self.args, self.reload_error = self.sets, new, wanted, None
        kept = {id(s.batcher) for s in new.values()}  # a shared engine's batcher retires with its whole group
        for gone in {id(s.batcher): s for s in old.values() if id(s.batcher) not in kept}.values():
            task = asyncio.create_task(live.retire(gone))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        logger.info("serving %s", self.versions())

    def _load_changed(self, wanted: ServeArgs) -> dict[str, LiveSet]:
        """The LiveSets for `wanted`: unchanged versions kept, the others loaded (their batchers closed on failure);
        a change to any set of a shared engine reloads that engine's whole group."""
        return shared_sets.load_sets(live.set_args(wanted), self.sets, self.factory, self.metrics, self.shared_factory)

    def versions(self) -> dict[str, str]:
        """model id -> the fingerprint of the version it serves."""
        return {name: s.fingerprint for name, s in self.sets.items()}

    def _problem(self) -> str | None:
        return next((f"{name}: {p}" for name, s in self.sets.items() if (p := s.batcher.healthy())), None)

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and Serve replaces it."""
        problem = self._problem()
        if problem:
            raise RuntimeError(problem)

    def __del__(self) -> None:
        for served in getattr(self, "sets", {}).values():
            served.batcher.close()

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        problem = self._problem()
        loads = [b.load() for b in {id(s.batcher): s.batcher for s in self.sets.values()}.values()]
        body = {"status": problem or "ok", "in_flight": sum(n for n, _ in loads), "waiting": sum(w for _, w in loads),
                "versions": self.versions(), "reload_error": self.reload_error}
        return JSONResponse(body, status_code=503 if problem else 200)

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        self.metrics.on_request("models")
        try:
            self._authorize(request)
        except errors.ApiError as err:
            return self._error(err, "models")
        cards = [card for served in self.sets.values() for card in served.cards]
        return JSONResponse(ModelList(data=cards).model_dump())

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
            parsed, served, gens = await self._parse(request, route)
        except Exception as err:  # noqa: BLE001 -- every failure becomes an OpenAI error response
            return self._error(errors.to_api_error(err, prompt_field=prompt_field), route)
        # `served` is this request's anchor-set version to the end, even if reconfigure swaps in another meanwhile
        events = served.batcher.submit(*gens)  # one engine request per prompt, their choices merged in one reply
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
                sse = self._sse(reply, first, events, parsed.include_usage())
                return StreamingResponse(sse, media_type="text/event-stream", headers=headers)
            async for batch in _chain(first, events):
                for event in batch:
                    reply.add(event)
            return JSONResponse({**reply.response(), "resolved_mix": resolved}, headers=headers)
        except Exception as err:  # noqa: BLE001
            return self._error(errors.to_api_error(err, prompt_field=prompt_field), route, served.headers())
        finally:
            if not streaming:  # also on cancellation (client gone): frees the request's batch slot
                await events.aclose()

    async def _parse(self, request: Request, route: str) -> tuple[Any, LiveSet, list]:
        """Authenticate, read and validate the body, pick the set its `model` names, apply the server's policy:
        (parsed body, the set that answers, engine requests)."""
        self._authorize(request)
        body = await _read_body(request, self.args.max_body_bytes)
        schema = ChatCompletionRequest if route == "chat" else CompletionRequest
        parsed = schema.model_validate_json(body)
        served = protocol.pick(self.sets, parsed.model)
        if served.calibration_due():  # a thread for the store read only when one is due, not per request
            await asyncio.to_thread(served.refresh_calibration)
        gens = protocol.generation_requests(parsed, served.args, served.mixes, served.vocab_size)
        return parsed, served, gens

    async def _sse(self, reply: replies.Reply, first, events: AsyncIterator, include_usage: bool) -> AsyncIterator[str]:
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

    def _error(self, err: errors.ApiError, route: str, headers: dict[str, str] | None = None) -> JSONResponse:
        self.metrics.on_error(route, err.status)
        return JSONResponse(err.json(), status_code=err.status, headers={**err.headers, **(headers or {})})


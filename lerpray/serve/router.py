"""The ingress of a multiplexed app: OpenAI HTTP in, each request handed to the set replicas that hold its set.

Serve's proxy routes a multiplexed request only by the `serve_multiplexed_model_id` header, but OpenAI clients name
the set in the body's `model`. So, as Ray Serve LLM's ingress does for LoRA adapters, `LerpRouter` reads the body
(authenticated and size-limited: lerpray.serve.answers), picks the set its `model` names (the set's id, a preset of
the main set, or `<set>:<inline mix>`: lerpray.serve.protocol.pick), and calls the set deployment
(lerpray.serve.multiplexed.LerpSets) through its handle with `.options(multiplexed_model_id=<set>, stream=True)`:
Serve's router prefers a replica that holds the set and otherwise picks one to load it. The set replica answers
with a head (status, headers, JSON body) and, for a stream, the server-sent events, passed on as they come.

/v1/models lists every set of the config: cards from each set's manifest when the router starts (context length and
KV cache unknown until a replica loads the set), replaced by a replica's own cards once one has answered for it.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations (Request) at runtime.
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException

from lerpray.serve import answers, errors, live, playground, protocol
from lerpray.serve.config import ServeArgs
from lerpray.serve.metrics import ServeMetrics

__all__ = ["LerpRouter", "manifest_cards"]

logger = logging.getLogger(__name__)

router_api = FastAPI(title="lerpray", description="OpenAI-compatible interpolated generation", docs_url=None)
router_api.add_exception_handler(StarletteHTTPException, answers.http_error)  # unknown routes: OpenAI's shape


@dataclass(frozen=True)
class SetRoute:
    """A set the router can send requests to (what protocol.pick needs: its args)."""

    args: ServeArgs


def manifest_cards(args: ServeArgs) -> list[dict]:
    """A set's /v1/models cards from its manifest alone (blocking store reads): no engine, so no context length."""
    from lerpray.anchors import open_set, read_manifest

    resolved = args.model_copy(update={"anchors": live.resolve_version(args.anchors)})
    layout = read_manifest(open_set(resolved.anchors)).layout()
    return [card.model_dump() for card in live.model_cards(resolved, layout, None)]


async def _rest(stream: DeploymentResponseGenerator, set_id: str) -> AsyncIterator[str]:
    """The set replica's server-sent events; cancelled there when the client goes away (frees its batch slot). If the
    replica is lost mid-stream, the error goes in-band (headers are gone), as the replica itself reports one."""
    finished = False
    try:
        async for lines in stream:
            yield lines
        finished = True
    except Exception as err:  # noqa: BLE001
        logger.warning("set %s: its replica's stream broke: %r", set_id, err)
        lost = errors.ApiError(503, f"the replica answering set {set_id!r} was lost mid-stream "
                               f"({type(err).__name__}); retry the request", type="server_error", code="set_unavailable")
        yield answers.sse_line(lost.json())
        finished = True
    finally:
        if not finished:
            stream.cancel()


# Serve pickles the class when it is decorated: every module-level name it uses must be defined above it.
@serve.deployment(
    name="LerpRouter",
    max_ongoing_requests=256,  # it only relays: many requests in flight per replica (the YAML may change it)
    max_queued_requests=512,
    backpressure_config={"retry_after_s": 1},  # Serve's own 503s (queue full) carry Retry-After
)
@serve.ingress(router_api)
class LerpRouter:
    def __init__(self, args: dict[str, Any] | ServeArgs, sets: DeploymentHandle) -> None:
        self.args = ServeArgs.model_validate(args)
        self._api_key = answers.api_key(self.args.api_key_env)
        self._sets = sets
        self.metrics = ServeMetrics()
        wanted = live.set_args(self.args)
        self.routes = {name: SetRoute(set_args) for name, set_args in wanted.items()}
        # set id -> its cards; a replica's (fingerprint-checked) replace the manifest's
        self.cards = {name: live.start_engine(manifest_cards, set_args) for name, set_args in wanted.items()}
        self.from_replica: set[str] = set()  # the set ids whose cards came from a replica

    @router_api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        return JSONResponse({"status": "ok", "sets": sorted(self.routes)})

    @router_api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        cards = [card for set_cards in self.cards.values() for card in set_cards]
        return answers.model_list(request, self._api_key, cards, self.metrics)

    @router_api.get("/playground")
    async def playground_page(self) -> Response:
        return playground.asset("index.html")

    @router_api.get("/playground/{name}")
    async def playground_asset(self, name: str) -> Response:
        return playground.asset(name)

    @router_api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._forward(request, "completions")

    @router_api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._forward(request, "chat")

    async def _forward(self, request: Request, route: str) -> Response:
        self.metrics.on_request(route)
        try:
            answers.authorize(request, self._api_key)
            body = await answers.read_body(request, self.args.max_body_bytes)
            set_id = protocol.pick(self.routes, answers.parse(body, route).model).args.model_name
        except Exception as err:  # noqa: BLE001 -- every failure becomes an OpenAI error response
            return answers.to_response(answers.failure(err, route, self.metrics))
        handle = self._sets.options(multiplexed_model_id=set_id, stream=True)
        stream = handle.answer.remote(route, body, set_id not in self.from_replica)
        try:
            head = await anext(stream)
        except Exception as err:  # noqa: BLE001 -- the set replicas are gone or overloaded: the client retries
            stream.cancel()
            logger.warning("set %s: no answer from its replicas: %r", set_id, err)
            unavailable = errors.ApiError(503, f"no replica of set {set_id!r} could answer ({type(err).__name__}); "
                                          "retry shortly", type="server_error", code="set_unavailable",
                                          headers={"Retry-After": str(self.args.retry_after_s)})  # fmt: skip
            return answers.to_response(answers.failure(unavailable, route, self.metrics))
        if head["cards"] is not None:
            self.cards[set_id], _ = head["cards"], self.from_replica.add(set_id)
        if head["status"] >= 400:
            self.metrics.on_error(route, head["status"])
        if head["body"] is not None:
            return JSONResponse(head["body"], status_code=head["status"], headers=head["headers"])
        return StreamingResponse(_rest(stream, set_id), media_type="text/event-stream", headers=head["headers"])


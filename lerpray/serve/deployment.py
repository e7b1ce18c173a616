"""The Serve deployment: a thin shim between HTTP and the engine (cf. Ray Serve LLM's `LLMServer`).

Its duties: (1) load the engine and the anchor set's manifest at start (the sets of `sets` on the main set's base
model share its engine, lerpray.serve.shared_sets; a set on another base gets its own),
check the config's presets against it, and roll to another version when Serve's `user_config` changes (`reconfigure`:
the new version loads beside the old, which finishes its requests; a version that fails to load is refused and the
old one keeps serving; see lerpray.serve.live), (2) authenticate and parse requests into engine requests
(`lerpray.serve.protocol`), (3) hand them to the
continuous batcher, (4) answer in OpenAI's shapes (`lerpray.serve.answers`, shared with the multiplexed app), streaming as server-sent events, with every failure mapped by
`lerpray.serve.errors`, every answer carrying the answering version (header x-lerpray-anchor-version and
`system_fingerprint`); it also serves the playground page (`lerpray.serve.playground`). It takes an
`engine_factory` so tests can inject an engine (and `shared_factory` for the engine of sets sharing a base; none
with an injected `engine_factory`: each set its own); the defaults are lerpray.model.loading's.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations (Request) at runtime, and Serve
# pickles this class by value, so string annotations would not resolve on the replica.
import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from lerpray.serve import answers, live, playground, protocol, shared_sets
from lerpray.serve.config import ServeArgs
from lerpray.serve.live import EngineFactory, LiveSet, serve_engine
from lerpray.serve.metrics import ServeMetrics
from lerpray.serve.shared_sets import SharedFactory, serve_shared_engine

__all__ = ["EngineFactory", "LerpServer", "serve_engine"]

RECONFIGURABLE = ("anchors", "sets")  # the user_config keys: which anchor-set version each model id serves

logger = logging.getLogger(__name__)

api = FastAPI(title="lerpray", description="OpenAI-compatible interpolated generation", docs_url=None)
api.add_exception_handler(StarletteHTTPException, answers.http_error)  # unknown routes: OpenAI's shape too


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
        self._api_key = answers.api_key(self.args.api_key_env)
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
        cards = [card for served in self.sets.values() for card in served.cards]
        return answers.model_list(request, self._api_key, cards, self.metrics)

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
        try:
            parsed, served, gens = await self._parse(request, route)
        except Exception as err:  # noqa: BLE001 -- every failure becomes an OpenAI error response
            return answers.to_response(answers.failure(err, route, self.metrics))
        return answers.to_response(await answers.answer(served, parsed, gens, route, self.metrics))

    async def _parse(self, request: Request, route: str) -> tuple[Any, LiveSet, list]:
        """Authenticate, read and validate the body, pick the set its `model` names, apply the server's policy:
        (parsed body, the set that answers, engine requests)."""
        answers.authorize(request, self._api_key)
        parsed = answers.parse(await answers.read_body(request, self.args.max_body_bytes), route)
        served = protocol.pick(self.sets, parsed.model)
        return parsed, served, await answers.prepare(served, parsed)

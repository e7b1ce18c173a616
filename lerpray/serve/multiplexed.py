"""The set replicas of a multiplexed app: Ray Serve's model multiplexing, with an anchor set as the model.

Each replica of `LerpSets` loads a set the first time a request for it arrives (`serve.get_multiplexed_model_id()`:
the router, lerpray.serve.router, names the set with `handle.options(multiplexed_model_id=...)`), in a method wrapped
by `serve.multiplexed(max_num_models_per_replica=multiplex.max_sets_per_replica)`. Serve then routes the set's next
requests to the replicas that hold it, and unloads the least recently used set when a replica must load one more;
an unloaded set's requests in flight finish before it leaves its engine (`HeldSet.__del__`). The sets on one base
model share ONE engine per replica (lerpray.serve.replica_bases: a PagedEngine whose anchor pool holds them, one copy
of the base weights whatever the number of sets); a set on another base model gets an engine of its own, shared with
the sets on its base. With an injected `engine_factory` (tests) each set has its own engine. A set is a LiveSet
(lerpray.serve.live: cards and MixContext of its own, the engine and batcher of its base), so requests are answered by
the same code as the one-deployment app (lerpray.serve.answers). Every answer names the replica (header x-lerpray-replica) and the replica
logs the multiplexed id it answered, so where a set's requests go can be checked.

This is the pattern of Ray Serve LLM's LoRA serving (an ingress that reads the body's model id, a model deployment
whose `serve.multiplexed` loader is built in `__init__` from the config). A set's anchor-set version is resolved when
it loads; Serve's `user_config` does not roll versions here (reload a set by redeploying).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from ray import serve

from lerpray.serve import answers, errors, live
from lerpray.serve.config import ServeArgs
from lerpray.serve.live import EngineFactory, LiveSet, serve_engine
from lerpray.serve.metrics import ServeMetrics
from lerpray.serve.replica_bases import ReplicaBases, SetRefused

__all__ = ["REPLICA_HEADER", "HeldSet", "LerpSets"]

REPLICA_HEADER = "x-lerpray-replica"  # the set replica that answered (its Serve replica id)
RETIRE_TIMEOUT_S = 600.0  # an unloaded set's requests in flight get this long to finish

logger = logging.getLogger("ray.serve")  # Serve's logger: these lines land in the replica's log file


class HeldSet:
    """A set loaded on this replica. Serve calls `__del__` (in a thread) when it unloads the set: the set's requests
    in flight finish, then it leaves its base's engine (`bases`; the engine closes with its last set), or, when it
    has an engine of its own, its batcher stops and its engine can be freed."""

    def __init__(self, served: LiveSet, load_s: float, held: dict[str, LiveSet],
                 bases: ReplicaBases | None = None) -> None:  # fmt: skip
        self.served, self.load_s, self._held, self._bases = served, load_s, held, bases
        self.users = 0  # requests that hold it, from getting it (before they reach its batcher) to their last event
        self._retired = threading.Event()

    def __del__(self) -> None:
        if self._retired.is_set():
            return
        self._retired.set()
        self._held.pop(self.served.args.model_name, None)
        if self._bases is not None:
            self._bases.release(self.served.args.model_name, lambda: self.users, RETIRE_TIMEOUT_S)
            logger.info("set %s unloaded", self.served.args.model_name)
            return
        deadline = time.monotonic() + RETIRE_TIMEOUT_S
        while (self.users or self.served.batcher.load() != (0, 0)) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.served.batcher.close()
        logger.info("set %s unloaded", self.served.args.model_name)


class SetLoadError(RuntimeError):
    """A set could not be loaded on this replica (answered 503: another replica or a later try may succeed)."""


@serve.deployment(
    name="LerpSets",
    # Defaults; a Serve YAML's `deployments:` block overrides them (num_replicas or autoscaling_config).
    max_ongoing_requests=64,
    max_queued_requests=128,
    health_check_period_s=5,
    health_check_timeout_s=30,
)
class LerpSets:
    def __init__(self, args: dict[str, Any] | ServeArgs, engine_factory: EngineFactory | None = None) -> None:
        self.args = ServeArgs.model_validate(args)
        if self.args.multiplex is None:
            raise ValueError("LerpSets serves a multiplexed app: set multiplex.max_sets_per_replica in the args")
        self.factory = engine_factory or serve_engine
        self.metrics = ServeMetrics()
        self.wanted = live.set_args(self.args)  # model id -> the args of the set it serves
        max_sets = self.args.multiplex.max_sets_per_replica
        self.bases = None if engine_factory else ReplicaBases(self.wanted, max_sets, self.metrics)  # one base copy
        self.held: dict[str, LiveSet] = {}  # the sets loaded here now (health checks)
        self.replica = serve.get_replica_context().replica_id.unique_id

        async def load_set(set_id: str) -> HeldSet:
            return await self._load(set_id)

        # Built here, not as a decorator, so the YAML's args set the capacity (as Ray Serve LLM's LLMServer does).
        self._set = serve.multiplexed(max_num_models_per_replica=self.args.multiplex.max_sets_per_replica)(load_set)

    async def _load(self, set_id: str) -> HeldSet:
        if set_id not in self.wanted:  # the router only sends ids of the config; a direct handle call may not
            raise SetLoadError(f"no set {set_id!r} in this app's config; the sets are {sorted(self.wanted)}")
        started = time.perf_counter()
        try:
            if self.bases is None:
                served = await asyncio.to_thread(live.start_set, self.wanted[set_id], self.factory, self.metrics)
            else:
                served = await asyncio.to_thread(self.bases.load, set_id)
        except SetRefused as err:
            logger.warning("set %s refused on replica %s: %s", set_id, self.replica, err)
            raise SetLoadError(str(err)) from err
        except Exception as err:
            logger.exception("set %s failed to load on replica %s", set_id, self.replica)
            raise SetLoadError(f"the anchor set of {set_id!r} could not be loaded ({type(err).__name__}: {err}); "
                               "check its URI and store, then retry") from err  # fmt: skip
        load_s = time.perf_counter() - started
        self.held[set_id] = served
        logger.info("set %s loaded on replica %s in %.2f s (%d held)", set_id, self.replica, load_s, len(self.held))
        return HeldSet(served, load_s, self.held, self.bases)

    async def answer(self, route: str, body: bytes, with_cards: bool = False) -> AsyncIterator[dict | str]:
        """A request for the set Serve routed here (its multiplexed id): first a head {"status", "headers", "body",
        "cards"} (body None for a stream; the set's /v1/models cards when `with_cards`), then a stream's server-sent
        events. Streamed back through the handle."""
        set_id = serve.get_multiplexed_model_id()
        logger.info("multiplexed id %s on replica %s (%s)", set_id, self.replica, route)
        headers = {REPLICA_HEADER: self.replica}
        try:
            held = await self._set(set_id)
        except SetLoadError as err:
            api_error = errors.ApiError(503, str(err), type="server_error", code="set_unavailable",
                                        headers={"Retry-After": str(self.args.retry_after_s)})  # fmt: skip
            done = answers.failure(api_error, route, self.metrics, headers)
        else:
            held.users += 1  # no await since the loader returned it: an unload now waits for this request
            try:  # aclosing: a cancelled stream (client gone) frees its batch slot now, not at garbage collection
                async with aclosing(self._answer(held.served, route, body, headers, with_cards)) as items:
                    async for item in items:
                        yield item
            finally:
                held.users -= 1
            return
        yield {"status": done.status, "headers": done.headers, "body": done.body, "cards": None}

    async def _answer(self, served: LiveSet, route: str, body: bytes, headers: dict[str, str],
                      with_cards: bool) -> AsyncIterator[dict | str]:  # fmt: skip
        cards = [card.model_dump() for card in served.cards] if with_cards else None
        try:
            parsed = answers.parse(body, route)
            gens = await answers.prepare(served, parsed)
        except Exception as err:  # noqa: BLE001 -- every failure becomes an OpenAI error response
            done = answers.failure(err, route, self.metrics, headers)
        else:
            done = await answers.answer(served, parsed, gens, route, self.metrics)
            done.headers.update(headers)
        yield {"status": done.status, "headers": done.headers, "body": done.body, "cards": cards}
        if done.stream is not None:
            async with aclosing(done.stream) as stream:
                async for lines in stream:
                    yield lines

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and Serve replaces it."""
        for name, served in list(self.held.items()):
            if problem := served.batcher.healthy():
                raise RuntimeError(f"{name}: {problem}")

"""An Engine over an AnchorPool: requests name their anchor set, which is paged in (and others out) as they arrive.

`PagedEngine` speaks the Engine's step API (add / step / has_work / abort), which the serving batcher drives from
one thread, plus `ready(request)`: whether the request's set can be made resident now. A request carries its set's
own mix (`GenerationRequest.anchor_set` names the set); `add` makes the set resident (AnchorPool.place), places the
mix on the set's slots (ResolvedMix.embed with slot indices) and hands it to the Engine. A set is busy while any
request of it is queued in or running on the Engine (counted here from `add` to its last finish event or its
abort), and a busy set is never evicted: a request whose set cannot be placed waits (`ready` is False) until a
running request finishes, so no request fails because of paging. The batcher admits in arrival order, so a waiting
set is not starved by later requests of resident sets.

    engine = PagedEngine(Engine(pool.imodel, tokenizer), pool)
    engine.generate([GenerationRequest(coeffs=(0.3, 0.7), prompt="Hi", anchor_set="support"), ...])

`on_page(set, load_s, evicted, resident)` is called after each page-in (serve/metrics.py counts them).

Sets may be registered and removed while the engine runs (`register` / `unregister`, from any thread: a
multiplexed replica's loader). They are queued and applied by the driving thread at its next `ready`, `add` or
`step`; a removal waits until no request of the set is queued or running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from lerpray.model.anchor_pool import AnchorPool, UnloadableSetError
from lerpray.model.engine import Engine
from lerpray.model.requests import EngineError, GenerationRequest, GenerationResult, TokenEvent

if TYPE_CHECKING:
    from lerpray.anchors import AnchorSet

__all__ = ["PageObserver", "PagedEngine", "UnloadableSetError"]

PageObserver = Callable[[str, float, list[str], int], None]  # (set paged in, seconds, sets evicted, sets resident)


class PagedEngine:
    """Batches requests of many anchor sets, at most `pool.capacity` anchors resident. Drive it from one thread."""

    def __init__(self, engine: Engine, pool: AnchorPool, on_page: PageObserver | None = None) -> None:
        if engine.imodel is not pool.imodel:
            raise ValueError("build the Engine over pool.imodel (lerpray.model.anchor_pool.build_pool)")
        self.engine, self.pool, self.on_page = engine, pool, on_page
        self._running: dict[str, list] = {}  # request id -> [set name, choices not finished]
        self._pending: list[tuple] = []  # (name, (held, problem)) to add, (name, None) to remove; in order
        self._pending_lock = threading.Lock()

    # ---- what serving reads of an engine ----------------------------------------------------------------------

    @property
    def imodel(self):
        return self.engine.imodel

    @property
    def layout(self):
        return self.engine.layout

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_batch_size(self) -> int:
        return self.engine.max_batch_size

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    @property
    def model_context(self) -> int:
        return self.engine.model_context

    @property
    def kv_cache_nbytes(self) -> int:
        return self.engine.kv_cache_nbytes

    def close(self) -> None:
        self.engine.close()

    # ---- sets added and removed while serving (any thread) --------------------------------------------------------

    def register(self, name: str, anchor_set: AnchorSet) -> str | None:
        """Queue `anchor_set` as set `name` (replacing one of that name); why it can never be resident here, or None.
        Raises ModelMismatchError for a set on another base model (nothing is queued)."""
        prepared = self.pool.prepare_set(name, anchor_set)
        with self._pending_lock:
            self._pending.append((name, prepared))
        return prepared[1]

    def unregister(self, name: str) -> None:
        """Queue the removal of set `name`: applied once none of its requests is queued or running."""
        with self._pending_lock:
            self._pending.append((name, None))

    def holds(self, name: str) -> bool:
        """Whether a request of set `name` is queued in or running on the engine (safe from any thread)."""
        return any(entry[0] == name for entry in list(self._running.values()))

    def _apply_pending(self) -> None:
        if not self._pending:
            return
        with self._pending_lock:
            busy, kept, waiting = self.busy(), [], set()
            for name, prepared in self._pending:
                if name in waiting or (name in busy and (prepared is None or name in self.pool.sets)):
                    kept.append((name, prepared))  # replacing or removing a set waits for its requests, in order
                    waiting.add(name)
                elif prepared is None:
                    self.pool.remove_set(name)
                else:
                    self.pool.add_set(name, *prepared)
            self._pending = kept

    # ---- step API ----------------------------------------------------------------------------------------------

    def busy(self) -> set[str]:
        """Sets with a request queued in or running on the engine (never evicted)."""
        return {name for name, _ in self._running.values()}

    def ready(self, request: GenerationRequest) -> bool:
        """Whether `add(request)` can run now without waiting for a running request to finish. True for a request
        `add` refuses (no set named, a set that can never be resident): add raises its error at once."""
        self._apply_pending()
        name = request.anchor_set
        if name is None or self.pool.problem(name) is not None:
            return True
        return self.pool.can_place(name, self.busy())

    def add(self, request: GenerationRequest) -> None:
        """Page the request's set in (if needed) and queue the request on its slots. Raises UnloadableSetError for a
        set that can never be resident, EngineError when it cannot be placed now (check `ready` first) or for
        anything the Engine refuses."""
        self._apply_pending()
        name = request.anchor_set
        if name is None:
            raise EngineError(f"this engine pages anchor sets: a request must name its set (anchor_set), one of "
                              f"{self.pool.sets}")  # fmt: skip
        if request.request_id in self._running:
            raise EngineError(f"request_id {request.request_id!r} is already in the engine; use a unique id")
        if len(request.mix.coeffs) != self.pool.anchors_of(name):
            raise EngineError(f"anchor set {name!r} has {self.pool.anchors_of(name)} anchors, the request's mix "
                              f"{len(request.mix.coeffs)} coefficients")  # fmt: skip
        before, evictions = set(self.pool.resident), self.pool.stats.evictions
        slots = self.pool.place(name, self.busy())
        if slots is None:
            raise EngineError(f"anchor set {name!r} cannot be paged in now: the sets in use hold the engine's "
                              f"{self.pool.capacity} anchor slots; wait for a request to finish (ready())")  # fmt: skip
        if name not in before and self.on_page is not None:
            evicted = sorted(before - set(self.pool.resident)) if self.pool.stats.evictions > evictions else []
            self.on_page(name, self.pool.stats.last_load_s, evicted, len(self.pool.resident))
        self.engine.add(replace(request, mix=request.mix.embed(slots, self.pool.capacity)))
        self._running[request.request_id] = [name, request.n]

    def has_work(self) -> bool:
        return self.engine.has_work()

    def abort(self, request_id: str) -> bool:
        self._running.pop(request_id, None)
        return self.engine.abort(request_id)

    def step(self, protect_streams: bool = True) -> list[TokenEvent]:
        events = self.engine.step(protect_streams)
        for event in events:
            if event.finish_reason is not None and (entry := self._running.get(event.request_id)) is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._running[event.request_id]
        self._apply_pending()  # a removal waiting for the requests that just finished
        return events

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run requests to completion, admitted in order as their sets can be placed; one result per choice, in the
        order of `requests` (then choice index). A refused request raises before any step."""
        waiting, texts, done = list(requests), {}, {}
        self._apply_pending()
        for name in {r.anchor_set for r in requests if r.anchor_set is not None}:
            self.pool.check(name)
        while waiting or self.has_work():
            while waiting and self.ready(waiting[0]):
                self.add(waiting.pop(0))
            if not self.has_work():  # nothing runs, so nothing is busy: cannot happen unless add was bypassed
                raise EngineError(f"anchor set {waiting[0].anchor_set!r} cannot be placed on an idle engine")
            for event in self.step(protect_streams=False):
                key = (event.request_id, event.index)
                texts[key] = texts.get(key, "") + event.text
                if event.finish_reason is not None:
                    done[key] = GenerationResult(event.request_id, texts[key], event.prompt_tokens,
                                                 event.completion_tokens, event.finish_reason, event.index)
        return [done[(r.request_id, i)] for r in requests for i in range(r.n)]

"""Continuous batching: many asyncio requests -> one engine, fed step by step from one dedicated thread.

The engine's `step()` is blocking torch work, so it runs on its own thread and the replica's event loop stays free
to accept, validate and stream. Between two decode steps the thread admits waiting requests (up to
`max_batch_size` in flight), so a new request joins the running batch instead of waiting for it to drain. Loop form:

    while open:
        while in_flight < max_batch_size and waiting: engine.add(waiting.popleft())
        if not engine.has_work(): sleep until a request arrives; continue
        for event in engine.step(): hand it to its request's asyncio.Queue (thread-safe, via the event loop)

A request with n choices takes n of the `max_batch_size` slots, and is done when all n have finished. Requests
beyond `max_batch_size` in flight wait in a queue of at most `max_queue`; past that `submit` raises
QueueFullError at once (the server answers 503 + Retry-After) rather than letting memory grow without bound.
Only the engine thread ever touches the engine.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["BatchObserver", "Batcher", "EngineLike", "QueueFullError"]

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """Every batch slot and queue place is taken; the client should retry after `retry_after_s`."""

    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(f"server overloaded: {waiting} requests already waiting; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class EngineLike(Protocol):
    """The step API of `lerpray.model.engine.Engine` that the batcher drives."""

    def add(self, request) -> None: ...
    def step(self) -> list: ...
    def has_work(self) -> bool: ...
    def abort(self, request_id: str) -> bool: ...
    # optional: ready(request) -> bool, False while the request must wait for a running one (paged anchor sets)


class BatchObserver(Protocol):
    """Metric hooks; called from the engine thread."""

    def on_step(self, batch_size: int, tokens: int) -> None: ...
    def on_admit(self, queue_s: float) -> None: ...
    def on_first_token(self, ttft_s: float) -> None: ...


@dataclass
class _Ticket:
    request: object  # a GenerationRequest
    loop: asyncio.AbstractEventLoop  # where its consumer awaits `events`
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # shared by the tickets of one submit()
    running: int = 0  # choices the engine has not finished (engine thread)
    submitted: float = field(default_factory=time.perf_counter)
    started: bool = False  # first token seen
    done: bool = False  # finished, failed or cancelled: deliver nothing more


class Batcher:
    def __init__(
        self,
        engine: EngineLike,
        *,
        max_batch_size: int,
        max_queue: int,
        retry_after_s: int = 1,
        observer: BatchObserver | None = None,
    ) -> None:
        self._engine = engine
        self._max_batch_size = max_batch_size
        self._max_queue = max_queue
        self._retry_after_s = retry_after_s
        self._observer = observer
        self._waiting: deque[_Ticket] = deque()
        self._in_flight: dict[str, _Ticket] = {}
        self._aborts: list[str] = []  # request ids whose clients went away
        self._wakeup = threading.Condition()
        self._closed = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lerpray-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def healthy(self) -> str | None:
        """None when serving; otherwise why not (engine thread gone or an engine step failed)."""
        if self._failure is not None:
            return f"engine step failed: {self._failure!r}"
        if not self._thread.is_alive():
            return "engine thread is not running"
        return None

    def load(self) -> tuple[int, int]:
        """(requests in flight, requests waiting)."""
        return len(self._in_flight), len(self._waiting)

    def close(self) -> None:
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()

    async def submit(self, *requests) -> AsyncIterator[list]:
        """Queue `requests` (GenerationRequests, all or none); yields lists of their TokenEvents until every choice
        of every request has finished.

        Each list holds every event that arrived since the last one (at least one), so a consumer that falls behind
        catches up in one write instead of one per token. Raises QueueFullError at once when the queue is full, or
        the engine's error for any of the requests (the others are then cancelled).
        """
        tickets = self._enqueue(requests, asyncio.get_running_loop())
        events, by_id = tickets[0].events, {t.request.request_id: t for t in tickets}
        unfinished = {t.request.request_id: _choices(t.request) for t in tickets}
        try:
            while not all(t.done for t in tickets):
                items = [await events.get()]
                while not events.empty():
                    items.append(events.get_nowait())
                if error := next((i for i in items if isinstance(i, BaseException)), None):
                    raise error
                for event in items:
                    if event.finish_reason is not None:
                        unfinished[event.request_id] -= 1
                        by_id[event.request_id].done = unfinished[event.request_id] == 0
                yield items
        finally:
            for ticket in tickets:
                if not ticket.done:  # the consumer stopped early (client gone, an error): free its batch slots
                    self._cancel(ticket)

    def _cancel(self, ticket: _Ticket) -> None:
        with self._wakeup:
            ticket.done = True
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            else:
                self._aborts.append(ticket.request.request_id)
                self._wakeup.notify()

    def _enqueue(self, requests, loop: asyncio.AbstractEventLoop) -> list[_Ticket]:
        with self._wakeup:
            if self._failure is not None:
                raise RuntimeError(f"the engine failed and this replica is restarting: {self._failure!r}")
            # Slots of cancelled requests count as free: the engine thread drops them before its next admission.
            free_slots = max(0, self._max_batch_size - len(self._in_flight) + len(self._aborts))
            if len(self._waiting) + len(requests) > self._max_queue + free_slots:
                raise QueueFullError(len(self._waiting), self._retry_after_s)
            events: asyncio.Queue = asyncio.Queue()
            tickets = [_Ticket(request, loop, events, _choices(request)) for request in requests]
            self._waiting.extend(tickets)
            self._wakeup.notify()
        return tickets

    # ---- engine thread ----

    def _run(self) -> None:
        try:
            while self._admit():
                events = self._engine.step()
                self._dispatch(events)
        except BaseException as err:  # the engine is in an unknown state: fail everything, report unhealthy
            logger.exception("engine step failed")
            self._failure = err
            with self._wakeup:
                doomed = list(self._in_flight.values()) + list(self._waiting)
                self._in_flight.clear()
                self._waiting.clear()
            self._deliver([(t, err) for t in doomed])

    def _admit(self) -> bool:
        """Move waiting requests into the engine; block while there is nothing to do. False once closed."""
        while True:
            with self._wakeup:
                while not (self._closed or self._waiting or self._aborts or self._engine.has_work()):
                    self._wakeup.wait()
                if self._closed:
                    return False
                aborts, self._aborts = self._aborts, []
                for request_id in aborts:
                    if self._in_flight.pop(request_id, None) is not None:
                        self._engine.abort(request_id)
                room = self._max_batch_size - sum(t.running for t in self._in_flight.values())
                admitted = []
                while self._waiting and _choices(self._waiting[0].request) <= room:
                    admitted.append(self._waiting.popleft())
                    room -= _choices(admitted[-1].request)
            rejected = []
            for i, ticket in enumerate(admitted):
                if self._engine.has_work() and not self._ready(ticket.request):  # its anchor set waits for a slot
                    with self._wakeup:  # back to the head, in order (a ticket cancelled meanwhile is dropped)
                        self._waiting.extendleft(reversed([t for t in admitted[i:] if not t.done]))
                    break
                if (err := self._add(ticket)) is not None:  # bad request (or, on an idle engine, unplaceable)
                    rejected.append((ticket, err))
            self._deliver(rejected)
            if self._engine.has_work():
                return True

    def _ready(self, request) -> bool:
        """An engine that pages anchor sets (lerpray.model.paged_engine) may not place a request's set until a
        running request finishes; the request then waits at the head of the queue."""
        ready = getattr(self._engine, "ready", None)
        return ready is None or ready(request)

    def _add(self, ticket: _Ticket) -> Exception | None:
        request_id = ticket.request.request_id
        try:
            self._engine.add(ticket.request)
        except Exception as err:  # bad request (e.g. prompt too long): its own error, the batch goes on
            return err
        self._in_flight[request_id] = ticket
        if self._observer:
            self._observer.on_admit(time.perf_counter() - ticket.submitted)
        return None

    def _dispatch(self, events: list) -> None:
        now = time.perf_counter()
        batch_size = len(self._in_flight)
        out = []
        for event in events:
            ticket = self._in_flight.get(event.request_id)
            if ticket is None:
                continue
            if not ticket.started:
                ticket.started = True
                if self._observer:
                    self._observer.on_first_token(now - ticket.submitted)
            if event.finish_reason is not None:
                ticket.running -= 1
                if ticket.running == 0:
                    del self._in_flight[event.request_id]
            out.append((ticket, event))
        if self._observer:
            self._observer.on_step(batch_size, len(events))
        self._deliver(out)

    def _deliver(self, items: list[tuple[_Ticket, object]]) -> None:
        """Hand items to their consumers' event loops: one thread-safe callback per loop per step."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Ticket, object]]] = {}
        for ticket, item in items:
            if not ticket.done:
                by_loop.setdefault(ticket.loop, []).append((ticket, item))
        for loop, batch in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_put_all, batch)


def _choices(request) -> int:
    return getattr(request, "n", 1)


def _put_all(items: list[tuple[_Ticket, object]]) -> None:
    for ticket, item in items:
        if not ticket.done:
            ticket.events.put_nowait(item)

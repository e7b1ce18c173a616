"""Which request runs where and when: KV-cache slots, the waiting queue, and each step's prompt chunks.

Pure Python bookkeeping over `Row`s (no tensors): the engine asks it whom to admit, whom to decode and how many
prompt tokens of whom to prefill, then runs the forward passes itself.

    admit:    a waiting request takes the lowest free slots, all its n choices at once, in arrival order
    chunks:   at most `prefill_chunk` prompt tokens per step while rows decode, shortest remaining prompt first (a short request's
              first token never waits for a long prompt), the oldest prefilling row always a quarter (no starvation)
    free:     a finished or aborted row's slot is free at once; nothing is copied or moved
"""

from __future__ import annotations

from collections import deque

from lerpray.model.rows import Row

__all__ = ["IDLE_PREFILL_TOKENS", "SlotScheduler"]

IDLE_PREFILL_TOKENS = 2048  # prompt tokens per step when no row is decoding


class SlotScheduler:
    def __init__(self, num_slots: int, prefill_chunk: int) -> None:
        self.slots: list[Row | None] = [None] * num_slots
        self.prefill_chunk = prefill_chunk
        self._waiting: deque[list[Row]] = deque()  # each entry: one request's choices, admitted together
        self.released: list[int] = []  # slots freed since the engine last cleared their coefficients
        self._admissions = 0

    def running(self) -> list[Row]:
        return [row for row in self.slots if row is not None]

    def queued(self) -> list[Row]:
        return [row for choices in self._waiting for row in choices]

    def has_work(self) -> bool:
        return bool(self._waiting) or any(row is not None for row in self.slots)

    def enqueue(self, choices: list[Row]) -> None:
        self._waiting.append(choices)

    def clear_queue(self) -> None:
        self._waiting.clear()

    def admit(self) -> list[Row]:
        """Give waiting requests free slots; returns the rows admitted now."""
        free = [slot for slot, occupant in enumerate(self.slots) if occupant is None]
        admitted = []
        while self._waiting and len(self._waiting[0]) <= len(free):
            for row in self._waiting.popleft():
                row.slot, row.admitted, self.slots[row.slot] = free.pop(0), self._admissions, row
                self._admissions += 1
                admitted.append(row)
        return admitted

    def free(self, row: Row) -> None:
        row.finished = True
        self.slots[row.slot] = None
        self.released.append(row.slot)

    def abort(self, request_id: str) -> bool:
        """Drop a waiting or running request; its slots are free at once. Returns whether it was found."""
        for choices in self._waiting:
            if choices[0].request.request_id == request_id:
                self._waiting.remove(choices)
                return True
        rows = [row for row in self.running() if row.request.request_id == request_id]
        for row in rows:
            self.free(row)
        return bool(rows)

    def decoding(self) -> list[Row]:
        return [row for row in self.running() if row.decoding]

    def prefilling(self) -> list[Row]:
        """Rows with prompt left to prefill (a request's other choices wait for its first choice's prompt)."""
        return [row for row in self.running() if not row.decoding and row.parent is None]

    def chunks(self, protect_streams: bool = True) -> list[tuple[Row, int]]:
        """This step's prompt chunks (row, tokens), in slot order (contiguous slots read cache views).

        The `prefill_chunk` budget protects decoding rows' streams; with none decoding, or no stream to protect
        (`protect_streams` False: an offline loop that only wants throughput), up to IDLE_PREFILL_TOKENS are
        prefilled at once. Without that, a full batch whose rows finish one by one would refill its slots at
        `prefill_chunk` prompt tokens per step and decode mostly empty slots.
        """
        pending = sorted(self.prefilling(), key=lambda r: r.admitted)
        small = protect_streams and self.decoding()
        chunk = self.prefill_chunk if small else max(self.prefill_chunk, IDLE_PREFILL_TOKENS)
        oldest = pending[0]
        takes = {id(oldest): min(oldest.remaining, max(1, chunk // 4))}
        budget = chunk - takes[id(oldest)]
        for row in sorted(pending, key=lambda r: r.remaining):
            extra = min(row.remaining - takes.get(id(row), 0), budget)
            if extra > 0:
                takes[id(row)] = takes.get(id(row), 0) + extra
                budget -= extra
        return [(row, takes[id(row)]) for row in sorted(pending, key=lambda r: r.slot) if id(row) in takes]

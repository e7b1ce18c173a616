"""From a step's logits to token events, with the host's text work overlapping the device's next forward.

A decode step on a GPU is launched asynchronously; what serialises host and device is the host waiting for the
sampled ids and then detokenising every row before it can launch the next step. So a step here is split:

    advance(rows, logits):   sample on the device, one copy of the ids (and log-probs) to the host (the step's
                             only sync, rows.choose_tokens); count each token (Row.record: the next input,
                             penalties) and end the rows at EOS or max_tokens, freeing their slots
    release_deferred():      called by the engine right after launching the next forward: detokenise the
                             previous step's rows (Row.release: text, stop strings, events) while the GPU runs

Rows that ended, rows whose steer hook reads their text (their next mix depends on it), and every row when
`overlap` is off (the CPU's default: there is nothing to overlap with) are released at once. A stop string found
in deferred text ends its row one forward late: the engine drops that forward's token for the row (`finished`), so
the reply is the same token for token, and the slot is free one step later.
"""

from __future__ import annotations

import torch

from lerpray.model.requests import TokenEvent
from lerpray.model.rows import Row, choose_tokens
from lerpray.model.scheduler import SlotScheduler

__all__ = ["Emission"]


class Emission:
    def __init__(self, scheduler: SlotScheduler, eos: frozenset[int], overlap: bool) -> None:
        self.scheduler, self.eos, self.overlap = scheduler, eos, overlap
        self.deferred: list[Row] = []  # rows whose last token's text waits for the next forward's launch

    def advance(self, rows: list[Row], logits: torch.Tensor) -> list[TokenEvent]:
        """Each row's next token from logits [N, V]; the events of the rows released now."""
        tokens, logprobs, tops = choose_tokens(logits, rows, self.eos)
        now = []
        for row, token, logprob, top in zip(rows, tokens, logprobs, tops, strict=True):
            row.record(token, self.eos, logprob, top)
            if row.finished:
                self.scheduler.free(row)
            if row.finished or row.request.steer is not None or not self.overlap:
                now.append(row)
            else:
                self.deferred.append(row)
        return self._release(now)

    def release_deferred(self) -> list[TokenEvent]:
        rows, self.deferred = self.deferred, []
        return self._release([row for row in rows if not row.finished])  # finished since: aborted, no event

    def _release(self, rows: list[Row]) -> list[TokenEvent]:
        """The rows' recorded tokens as events; a row that a stop string ends now frees its slot."""
        events = []
        for row in rows:
            ended = row.finished
            events.append(row.release())
            if row.finished and not ended:
                self.scheduler.free(row)
        return events

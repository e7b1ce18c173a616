"""Progress plumbing without a cluster: the board's snapshots and the driver's log lines."""

from __future__ import annotations

import io

import pytest

pytestmark = pytest.mark.unit


def metrics(step: int, **kw) -> dict:
    return {"step": step, "total_steps": 10, "loss": 2.5, "tokens_per_s": 1234.0, "resumed_from": 0, "pid": 7, **kw}


def test_board_snapshot_carries_the_latest_registered_checkpoint():
    from lerpray.train.progress import ProgressBoard

    board = ProgressBoard()
    board.update("a.x", metrics(3))
    assert board.snapshot()["a.x"]["checkpoint"] == 0
    board.checkpoint_registered("a.x", 2, 7)
    board.update("a.x", metrics(4))
    board.checkpoint_registered("a.x", 4, 8)
    assert board.snapshot() == {"a.x": {**metrics(4), "checkpoint": 4}}
    assert board.checkpoints() == {"a.x": [{"step": 2, "pid": 7}, {"step": 4, "pid": 8}]}


def test_view_writes_plain_lines_off_a_terminal_at_most_every_interval():
    from lerpray.train.progress import ProgressView

    stream = io.StringIO()  # not a TTY: lines, not bars
    view = ProgressView(["a.x", "a.y"], stream=stream, log_every_s=3600)
    view.update({"a.x": {**metrics(1), "checkpoint": 0}})
    view.update({"a.x": {**metrics(2), "checkpoint": 0}})  # within the interval: skipped
    view.update({"a.y": {**metrics(10, resumed_from=4), "checkpoint": 8}})
    view.update({"a.y": {**metrics(10, resumed_from=4), "checkpoint": 8, "finished": True}})  # same step, now done
    view.close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "[lerpray train] a.x: step 1/10 loss 2.5000  1,234 tok/s  ckpt@0",
        "[lerpray train] a.y: step 10/10 loss 2.5000  1,234 tok/s  ckpt@8  (resumed from step 4)",
        "[lerpray train] a.y: step 10/10 loss 2.5000  1,234 tok/s  (resumed from step 4)  done",
    ]


def test_disabled_view_writes_nothing():
    from lerpray.train.progress import ProgressView

    stream = io.StringIO()
    view = ProgressView(["a.x"], stream=stream, enabled=False)
    view.update({"a.x": {**metrics(1), "checkpoint": 0}})
    assert stream.getvalue() == ""

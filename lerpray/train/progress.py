"""Per-anchor training progress: workers post to a board (a Ray actor in the driver's job), the driver draws it.

`ProgressBoard` is plain Python; `start_board` runs it as a Ray actor pinned to the driver's node, so losing a
worker node never takes it along (losing the driver's node ends the driver anyway). Rank 0 of each anchor posts
{step, total_steps, loss, tokens_per_s, resumed_from, pid} after every optimizer step, and `CheckpointRegistered`
(a Ray Train callback in the anchor's controller) posts each checkpoint once Ray Train has registered it, i.e. once
a restarted worker would resume from it. Both post fire and forget: a call on a dead actor's handle returns at once
and never raises in the caller (its error sits in an object nobody reads), so they never fail because the board
is gone. The driver reads the board through `BoardReader`, which never blocks on it and treats its loss as a lost
progress display, not a failed run. `ProgressView` draws one tqdm bar per anchor on a terminal, or a plain line per
anchor every few seconds in logs (`ray job logs`, CI), where bars would be noise.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from ray.train import UserCallback


class ProgressBoard:
    """Latest metrics per anchor, and every registered checkpoint (step, reporting worker's pid) in order."""

    def __init__(self) -> None:
        self._latest: dict[str, dict] = {}
        self._checkpoints: dict[str, list[dict]] = {}

    def update(self, anchor: str, metrics: dict) -> None:
        self._latest[anchor] = dict(metrics)

    def checkpoint_registered(self, anchor: str, step: int, pid: int | None) -> None:
        self._checkpoints.setdefault(anchor, []).append({"step": step, "pid": pid})

    def snapshot(self) -> dict[str, dict]:
        """{anchor: latest metrics + "checkpoint" (the step of the latest registered checkpoint, 0 if none)}."""
        return {name: {**m, "checkpoint": self._last_checkpoint(name)} for name, m in self._latest.items()}

    def _last_checkpoint(self, anchor: str) -> int:
        events = self._checkpoints.get(anchor)
        return events[-1]["step"] if events else 0

    def checkpoints(self) -> dict[str, list[dict]]:
        return {name: list(events) for name, events in self._checkpoints.items()}


def start_board(options: dict | None = None):
    """Start a ProgressBoard actor: no CPU, on the driver's node (hard affinity), unless `options` (Ray actor
    options, merged over those) say otherwise, e.g. {"name": ...} or another scheduling_strategy."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(ProgressBoard).options(**{"num_cpus": 0, "scheduling_strategy": here, **(options or {})}).remote()


class BoardReader:
    """The driver's side of the board. `poll()` never blocks: it returns a snapshot that arrived since the last call
    (else None) and asks for the next. If the board dies, one warning is logged, `lost` says why, and from then on
    there is no progress (poll: None; final: empty), while training goes on."""

    def __init__(self, board, timeout_s: float = 60.0):
        self.board = board
        self.timeout_s = timeout_s  # for the final, blocking read (a loaded 2-core machine answers in seconds)
        self.lost: str | None = None
        self._pending = None

    def poll(self) -> dict[str, dict] | None:
        import ray

        if self.lost is not None:
            return None
        if self._pending is None:
            self._pending = self.board.snapshot.remote()
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return None
        ref, self._pending = self._pending, None
        snapshot = self._get(ref)
        if self.lost is None:
            self._pending = self.board.snapshot.remote()
        return snapshot

    def final(self) -> tuple[dict[str, dict], dict[str, list[dict]]]:
        """(the latest snapshot, every registered checkpoint), waiting up to timeout_s; ({}, {}) once lost."""
        snapshot = checkpoints = None
        if self.lost is None:
            snapshot = self._get(self.board.snapshot.remote(), self.timeout_s)
        if self.lost is None:
            checkpoints = self._get(self.board.checkpoints.remote(), self.timeout_s)
        return snapshot or {}, checkpoints or {}

    def close(self) -> None:
        import ray

        ray.kill(self.board)  # a dead actor's kill is a no-op

    def _get(self, ref, timeout_s: float | None = None):
        import ray
        from ray.exceptions import ActorUnavailableError, ActorUnschedulableError, GetTimeoutError, RayActorError

        try:
            return ray.get(ref, timeout=timeout_s)
        except ActorUnavailableError:
            return None  # unreachable for a moment (Ray says so): ask again next time
        except (RayActorError, ActorUnschedulableError, GetTimeoutError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
            self.lost = f"{type(err).__name__}: {next((x for x in lines if 'because' in x), lines[0])}"
            logging.getLogger(__name__).warning("the training progress board is gone (%s); training goes on "
                                                "without progress reports", self.lost)
            return None


class CheckpointRegistered(UserCallback):
    """Runs in an anchor's Ray Train controller: tells the board each checkpoint Ray Train has registered."""

    def __init__(self, board, anchor: str):
        self.board = board
        self.anchor = anchor

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if checkpoint is not None and metrics:
            self.board.checkpoint_registered.remote(self.anchor, metrics[0].get("step"), metrics[0].get("pid"))


class ProgressView:
    """Draws board snapshots: tqdm bars on a TTY, else one line per anchor at most every `log_every_s`."""

    def __init__(self, anchors: list[str], *, enabled: bool = True, stream: TextIO | None = None,
                 log_every_s: float = 10.0):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.log_every_s = log_every_s
        self._bars: dict = {}
        self._last_line: dict[str, tuple[float, tuple[int, bool]]] = {}
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm

            width = max(len(a) for a in anchors)
            layout = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}]{postfix}"
            self._bars = {a: tqdm(total=None, desc=a.ljust(width), position=i, file=self.stream, bar_format=layout,
                                  dynamic_ncols=True, leave=True) for i, a in enumerate(anchors)}

    def update(self, snapshot: dict[str, dict]) -> None:
        if not self.enabled:
            return
        for anchor, metrics in snapshot.items():
            if anchor in self._bars:
                self._draw_bar(anchor, metrics)
            else:
                self._log_line(anchor, metrics)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()

    def _draw_bar(self, anchor: str, metrics: dict) -> None:
        bar = self._bars[anchor]
        bar.total = metrics["total_steps"]
        bar.n = metrics["step"]
        bar.set_postfix_str(describe(metrics), refresh=False)
        bar.refresh()

    def _log_line(self, anchor: str, metrics: dict) -> None:
        now, key = time.monotonic(), (metrics["step"], bool(metrics.get("finished")))
        last_time, last_key = self._last_line.get(anchor, (-1e9, None))
        if key == last_key or (now - last_time < self.log_every_s and not metrics.get("finished")):
            return
        self._last_line[anchor] = (now, key)
        print(f"[lerpray train] {anchor}: step {metrics['step']}/{metrics['total_steps']} {describe(metrics)}",
              file=self.stream, flush=True)


def describe(metrics: dict) -> str:
    """One progress line, e.g. `loss 2.3456  1,234 tok/s  ckpt@40  (resumed from step 20)`, from what `metrics` has."""
    loss = "-" if metrics.get("loss") is None else f"{metrics['loss']:.4f}"
    parts = [f"loss {loss}", f"{metrics.get('tokens_per_s', 0):,.0f} tok/s"]
    if "checkpoint" in metrics and not metrics.get("finished"):
        parts.append(f"ckpt@{metrics['checkpoint']}")  # the finished run's final checkpoint may register a bit later
    if metrics.get("resumed_from"):
        parts.append(f"(resumed from step {metrics['resumed_from']})")
    if metrics.get("finished"):
        parts.append("done")
    return "  ".join(parts)

"""The driver's fan-out (no Ray): anchors run `width` at a time, a failure stops queued anchors, and the worker
arguments carry the config's values with relative paths pinned to the driver's folder."""

from __future__ import annotations

import threading
import time

import pytest

from lerpray.train.config import parse_train_config
from lerpray.train.driver import TrainingFailed, run_concurrently, worker_args

pytestmark = pytest.mark.unit


class Recorder:
    """fit() stand-ins that count how many run at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started: list[str] = []

    def fit(self, name: str, fail: bool = False, seconds: float = 0.05):
        def run():
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.started.append(name)
            time.sleep(seconds)
            with self.lock:
                self.running -= 1
            if fail:
                raise RuntimeError(f"{name} broke")
            return f"result of {name}"

        return run


def test_runs_at_most_width_at_once_and_returns_every_result():
    rec = Recorder()
    fits = {f"a.{i}": rec.fit(f"a.{i}") for i in range(5)}
    polls, spans = [], {}
    results = run_concurrently(fits, width=2, poll=lambda: polls.append(1), spans=spans)
    assert results == {name: f"result of {name}" for name in fits}
    assert rec.most == 2
    assert set(spans) == set(fits) and all(end >= start for start, end in spans.values())
    assert polls  # progress was polled while waiting


def test_a_failure_stops_queued_anchors_but_not_running_ones():
    rec = Recorder()
    fits = {"a.bad": rec.fit("a.bad", fail=True, seconds=0.0), "a.slow": rec.fit("a.slow", seconds=0.3),
            "b.queued": rec.fit("b.queued", seconds=0.5), "b.last": rec.fit("b.last")}
    results = run_concurrently(fits, width=2, poll=lambda: None, spans={})
    assert isinstance(results["a.bad"], RuntimeError)
    assert results["a.slow"] == "result of a.slow"  # was running: finishes (and keeps its checkpoints)
    # The failure lands before the running anchors free a slot, so at most one queued anchor slips in.
    not_started = [n for n in ("b.queued", "b.last") if isinstance(results[n], TrainingFailed)]
    assert "b.last" in not_started and "b.last" not in rec.started


def test_worker_args_take_overrides_and_pin_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pos.txt").write_text("good\n")
    config = parse_train_config({
        "attributes": {"sentiment": {"high": "positive", "low": "negative"}},
        "lora": {"r": 8},
        "training": {"max_steps": 5},
        "anchors": [
            {"attribute": "sentiment", "pole": "positive", "data": {"paths": ["pos.txt"]}},
            {"attribute": "sentiment", "pole": "negative", "data": {"paths": ["s3://bucket/neg.jsonl"]},
             "lora": {"r": 2}},
        ],
        "deepspeed": {"stage": 3, "offload_optimizer": True},
        "output": "out",
        "s3": {"endpoint_url": "http://127.0.0.1:9000"},
    })
    pos, neg = (worker_args(a, config) for a in config.anchors)
    assert pos.data_paths == (str(tmp_path / "pos.txt"),)  # workers run elsewhere: absolute
    assert neg.data_paths == ("s3://bucket/neg.jsonl",)
    assert (pos.r, neg.r, pos.max_steps, pos.lora_alpha) == (8, 2, 5, 16.0)
    assert (pos.deepspeed_stage, pos.offload_optimizer) == (3, True)
    assert pos.s3_options == {"endpoint_url": "http://127.0.0.1:9000"}
    assert pos.base_model is None  # the bundled model

"""The driver's fan-out (no Ray): anchors run `width` at a time, a failure stops queued anchors, and the worker
arguments carry the config's values with relative paths pinned to the driver's folder. The driver's progress
reader (ray.wait / ray.get replaced by fakes): it never blocks, and a dead board is one warning, not an error."""

from __future__ import annotations

import threading
import time

import pytest

from lerpray.train.config import parse_train_config
from lerpray.train.driver import TrainingFailed, _storage, run_concurrently, worker_args

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


def test_ray_train_storage_on_an_explicit_s3_endpoint_uses_the_stores_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"attributes": {"sentiment": {"high": "positive", "low": "negative"}}, "output": "out",
            "anchors": [{"attribute": "sentiment", "pole": p, "data": {"paths": ["x.txt"]}} for p in ("positive", "negative")]}
    path, filesystem = _storage(parse_train_config({**base, "storage_path": "runs"}))
    assert (path, filesystem) == (str(tmp_path / "runs"), None)
    path, filesystem = _storage(parse_train_config({**base, "storage_path": "s3://bucket/ray",
                                                    "s3": {"endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1"}}))
    assert path == "bucket/ray"
    assert (type(filesystem).__name__, filesystem.region) == ("S3FileSystem", "eu-west-1")



class Ref:
    """A fake object ref: what ray.get gives (a value, or an error it raises), and whether ray.wait finds it ready."""

    def __init__(self, value, ready: bool = True):
        self.value, self.ready = value, ready


class FakeBoard:
    """A board handle: board.snapshot.remote() and board.checkpoints.remote() hand out `refs` in order."""

    def __init__(self, refs: list[Ref]):
        self.refs = list(refs)
        self.calls = 0
        self.snapshot = self.checkpoints = self

    def remote(self) -> Ref:
        self.calls += 1
        return self.refs.pop(0)


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    def get(ref: Ref, timeout=None):
        if isinstance(ref.value, BaseException):
            raise ref.value
        return ref.value

    monkeypatch.setattr(ray, "wait", lambda refs, timeout: ([r for r in refs if r.ready], []))
    monkeypatch.setattr(ray, "get", get)
    return ray


def test_board_reader_never_blocks_and_hands_each_snapshot_once(fake_ray):
    from lerpray.train.progress import BoardReader

    first = Ref({"a": {"step": 3}}, ready=False)
    board = FakeBoard([first, Ref({"a": {"step": 4}}, ready=False)])
    reader = BoardReader(board)
    assert reader.poll() is None and board.calls == 1  # asked, not answered yet: no waiting
    first.ready = True
    assert reader.poll() == {"a": {"step": 3}} and board.calls == 2  # the answer, and the next question
    assert reader.poll() is None and board.calls == 2 and reader.lost is None


def test_a_dead_board_is_one_warning_and_no_more_progress(fake_ray, caplog):
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from lerpray.train.progress import BoardReader

    board = FakeBoard([Ref(ActorUnavailableError("restarting", None)), Ref(ActorDiedError()), Ref("unused")])
    reader = BoardReader(board)
    assert reader.poll() is None and reader.lost is None  # unavailable for a moment: ask again, not lost
    assert reader.poll() is None
    assert reader.lost == "ActorDiedError: The actor died unexpectedly before finishing this task."
    calls = board.calls
    assert reader.poll() is None and reader.final() == ({}, {}) and board.calls == calls  # never asked again
    assert [r.levelname for r in caplog.records if "progress board is gone" in r.getMessage()] == ["WARNING"]


def test_a_board_that_does_not_answer_at_the_end_counts_as_lost(fake_ray):
    from ray.exceptions import GetTimeoutError

    from lerpray.train.progress import BoardReader

    reader = BoardReader(FakeBoard([Ref({"a": {"step": 9}}), Ref(GetTimeoutError("Get timed out"))]), timeout_s=0.1)
    assert reader.final() == ({"a": {"step": 9}}, {})
    assert reader.lost == "GetTimeoutError: Get timed out"

"""Every benchmark result file records the machine, the date and the git commit (benchmarks/_common.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _common():
    spec = importlib.util.spec_from_file_location("lerpray_bench_common", BENCH / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_git_commit_env_override_and_unknown_without_git(tmp_path, monkeypatch):
    common = _common()
    monkeypatch.delenv(common.COMMIT_ENV, raising=False)
    assert common.git_commit(tmp_path) == "unknown"  # a copy without .git
    monkeypatch.setenv(common.COMMIT_ENV, "0123abc")
    assert common.git_commit(tmp_path) == "0123abc"


def test_write_json_adds_meta_from_the_machine_description(tmp_path, monkeypatch):
    common = _common()
    monkeypatch.setenv(common.COMMIT_ENV, "feedbeef")
    machine = {"timestamp_utc": "2026-12-06T04:00:00+00:00", "cpu_model": "AMD EPYC", "logical_cores": 2}
    meta = json.loads(common.write_json(tmp_path / "r.json", {"machine": machine, "x": 1}).read_text())["meta"]
    assert meta == {"machine": "2-core AMD EPYC", "date": "2026-12-06T04:00:00+00:00", "commit": "feedbeef",
                    "recorded": "by the benchmark"}  # fmt: skip
    gpu = {**machine, "gpu_name": "NVIDIA H100 80GB HBM3"}
    assert common.result_meta(gpu)["machine"].startswith("NVIDIA H100 80GB HBM3")
    # no machine description in the payload: this machine is described now
    meta = json.loads(common.write_json(tmp_path / "s.json", {"x": 1}).read_text())["meta"]
    assert meta["commit"] == "feedbeef" and meta["machine"] and meta["date"].startswith("20")
    # a payload that brings its own meta keeps it
    assert json.loads(common.write_json(tmp_path / "t.json", {"meta": {"a": 1}}).read_text())["meta"] == {"a": 1}

"""`lerpray submit` and `lerpray jobs` against a real Ray head started for this file on loopback (its own temp dir
and ports; stopped by PID at the end), with tiny models saved to disk: a batch job (and, marked slow, a training
job) runs to SUCCEEDED through the CLI and its output is checked; a failing job makes `--follow` exit 1."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

# The head, its workers and the job drivers inherit this (jobs run `python` from PATH: this venv's).
HEAD_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
              "object-manager-port")
JOB_TIMEOUT_S = 240


@dataclass(frozen=True)
class RayHead:
    address: str  # the Jobs API: http://127.0.0.1:DASHBOARD_PORT
    temp_dir: Path


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open until every one is picked)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def processes_of(temp_dir: Path) -> dict[int, object]:
    """Every process whose command line names `temp_dir` (gcs_server, raylet, dashboard, agents, ...) and all their
    descendants (workers, job supervisors and drivers); never this process or its parents."""
    import psutil

    marker = str(temp_dir)
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid not in me and any(marker in arg for arg in proc.info["cmdline"] or ()):
                found.update({p.pid: p for p in (proc, *proc.children(recursive=True)) if p.pid not in me})
        except psutil.Error:
            continue
    return found


def stop_processes(procs: dict[int, object]) -> None:
    """SIGTERM, then SIGKILL whatever is still there 3 s later (gcs_server can linger after SIGTERM)."""
    import psutil

    for proc in procs.values():
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=3)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """`ray start --head` with the dashboard (the Jobs API lives there) on free ports and a fresh temp dir."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lrt-", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
               "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2", "--num-gpus=0",
               f"--temp-dir={temp_dir}", "--object-store-memory=200000000", "--disable-usage-stats",
               *(f"--{flag}={port}" for flag, port in ports.items())]
    started: dict[int, object] = {}
    try:
        result = subprocess.run(command, env={**os.environ, **HEAD_ENV}, capture_output=True, text=True,
                                timeout=180)
        started = processes_of(temp_dir)  # recorded now; workers and drivers are found again at the end
        assert result.returncode == 0, f"ray start failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        yield RayHead(address=f"http://127.0.0.1:{ports['dashboard-port']}", temp_dir=temp_dir)
    finally:
        stop_processes({**started, **processes_of(temp_dir)})
        shutil.rmtree(temp_dir, ignore_errors=True)


def lerpray(*args: str, timeout: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
    """The real `lerpray` command in a fresh process."""
    return subprocess.run([sys.executable, "-m", "lerpray.cli", *args], env={**os.environ, **HEAD_ENV},
                          capture_output=True, text=True, timeout=timeout)


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def submit_and_follow(head: RayHead, kind: str, config: Path) -> tuple[str, subprocess.CompletedProcess]:
    result = lerpray("submit", kind, str(config), "--address", head.address, "--follow")
    job_id = result.stdout.splitlines()[0] if result.stdout else ""
    assert job_id.startswith("raysubmit_"), f"no job id printed:\n{result.stdout}\n{result.stderr}"
    return job_id, result


@pytest.mark.slow
def test_submit_train_follow_publishes_a_verified_anchor_set(ray_head, tmp_path):
    """Slow (~70 s here, one Ray Train run inside a job): the default run submits a batch job through the same
    `lerpray submit` path, and tests/integration/test_train.py trains."""
    from lerpray.anchors import load_anchor_set, verify_anchor_set
    from lerpray.testing import save_tiny_base_model
    from lerpray.train.config import parse_train_config

    base = save_tiny_base_model(tmp_path / "base")
    (tmp_path / "pos.txt").write_text("\n".join(f"What a lovely day, I love it! ({i})" for i in range(60)))
    (tmp_path / "neg.txt").write_text("\n".join(f"What an awful day, I hate it. ({i})" for i in range(60)))
    config = {
        "run_id": f"submit-{uuid.uuid4().hex[:8]}",
        "base_model": str(base),
        "attributes": {"sentiment": {"high": "positive", "low": "negative"}},
        "lora": {"r": 2, "lora_alpha": 4, "dropout": 0.0},
        "training": {"block_size": 32, "batch_size": 2, "max_steps": 2},
        "anchors": [{"attribute": "sentiment", "pole": "positive", "data": {"paths": [str(tmp_path / "pos.txt")]}},
                    {"attribute": "sentiment", "pole": "negative", "data": {"paths": [str(tmp_path / "neg.txt")]}}],
        "resources": {"workers_per_anchor": 1, "cpus_per_worker": 1},
        "checkpoint_every": 2,
        "max_failures": 0,
        "output": str(tmp_path / "anchors"),
        "storage_path": str(tmp_path / "ray-storage"),
    }
    parse_train_config(config)  # the config follows the training job's own model

    job_id, result = submit_and_follow(ray_head, "train", write_yaml(tmp_path / "train.yaml", config))

    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert f"job {job_id}: SUCCEEDED" in result.stderr
    assert verify_anchor_set(str(tmp_path / "anchors")) == []
    manifest = load_anchor_set(str(tmp_path / "anchors")).manifest
    assert [a.name for a in manifest.anchors] == ["sentiment.positive", "sentiment.negative"]


def test_submit_batch_follow_writes_one_row_per_prompt_and_mix(ray_head, tmp_path, capsys):
    from lerpray.batch.config import parse_batch_config
    from lerpray.cli import main
    from lerpray.testing import tiny_anchor_set

    anchors = tiny_anchor_set(tmp_path / "set")
    prompts = ["Once upon a time", "Dear customer,", "In conclusion"]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    mixes = [{"alpha": {"sentiment": 0.0}}, {"alpha": {"sentiment": 1.0}}]
    config = {
        "anchors": str(anchors),
        "input": {"paths": [str(tmp_path / "prompts.jsonl")]},
        "mixes": mixes,
        "sampling": {"temperature": 0.0, "max_tokens": 4, "seed": 1},
        "resources": {"num_actors": 1, "batch_size": 4, "num_cpus_per_actor": 1},
        "output": {"path": str(tmp_path / "out"), "format": "jsonl"},
        "progress": False,
    }
    parse_batch_config(config)  # the config follows the batch job's own model

    job_id, result = submit_and_follow(ray_head, "batch", write_yaml(tmp_path / "batch.yaml", config))

    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    rows = [json.loads(line) for path in sorted((tmp_path / "out").rglob("*.json*"))
            for line in path.read_text().splitlines() if line.strip()]
    assert sorted((r["row_id"], r["mix_index"]) for r in rows) == [(i, m) for i in range(3) for m in range(2)]
    for row in rows:
        assert row["prompt"] == prompts[row["row_id"]] and json.loads(row["mix"]) == mixes[row["mix_index"]]
        assert isinstance(row["text"], str) and row["completion_tokens"] >= 1

    capsys.readouterr()
    assert main(["jobs", "status", job_id, "--address", ray_head.address]) == 0
    assert capsys.readouterr().out.startswith(f"{job_id}: SUCCEEDED")
    assert main(["jobs", "logs", job_id, "--address", ray_head.address]) == 0
    assert "python -m lerpray batch" in capsys.readouterr().out  # Ray logs the entrypoint it runs
    assert main(["jobs", "stop", job_id, "--address", ray_head.address]) == 0
    assert "not running (SUCCEEDED)" in capsys.readouterr().out


def test_failed_and_stopped_jobs_exit_1_and_unknown_ids_are_one_line_errors(ray_head, tmp_path, capsys):
    from lerpray.cli import main

    # Valid for the sweep's config model, but there is no anchor set to load: the job fails on the cluster.
    config = write_yaml(tmp_path / "bad.yaml", {"out": str(tmp_path / "sweep"), "anchors": str(tmp_path / "none")})

    job_id, result = submit_and_follow(ray_head, "eval", config)

    assert result.returncode == 1, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert f"job {job_id}: FAILED" in result.stderr
    # Submitted without --follow and stopped at once (setting up its runtime env alone takes seconds).
    capsys.readouterr()
    assert main(["submit", "eval", str(config), "--address", ray_head.address]) == 0
    stopped = capsys.readouterr().out.split()[0]
    assert main(["jobs", "stop", stopped, "--address", ray_head.address]) == 0
    assert capsys.readouterr().out.strip() == f"{stopped}: stop requested"
    assert main(["jobs", "logs", stopped, "--follow", "--address", ray_head.address]) == 1
    assert f"job {stopped}: STOPPED" in capsys.readouterr().err
    for action in ("status", "logs", "stop"):
        assert main(["jobs", action, "raysubmit_doesnotexist", "--address", ray_head.address]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "no job 'raysubmit_doesnotexist'" in err, err

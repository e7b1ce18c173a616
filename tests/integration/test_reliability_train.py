"""Kill the training driver: a row of docs/reliability.md.

`lerpray train CONFIG --run-id ID --address ADDR` runs as a subprocess (the driver) on a 2-CPU Ray cluster this test
started, as a driver on a real cluster would. Once Ray Train has registered a checkpoint of every anchor (its
checkpoint_manager_snapshot.json under storage_path names one), the driver process gets SIGKILL: only that PID; it
started no processes of its own (its trainers run as the cluster's actors, which Ray stops with their job). Running
the same command again resumes every anchor from its latest checkpoint instead of step 0 and publishes the set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ANCHORS = ("sentiment.positive", "sentiment.negative")
MAX_STEPS, EVERY = 12, 3


@pytest.fixture(scope="module")
def cluster_address():
    import ray

    from lerpray.ray_cluster import local_ray

    with local_ray(num_cpus=2, log_to_driver=False):
        yield ray.get_runtime_context().gcs_address


@pytest.fixture
def job(tmp_path) -> tuple[Path, str, Path, Path]:
    """(config YAML, run id, output folder, storage_path) of a two-anchor job on a tiny saved Llama."""
    from lerpray.testing import save_tiny_base_model

    base = save_tiny_base_model(tmp_path / "base")
    for pole, word in (("positive", "love"), ("negative", "hate")):
        (tmp_path / f"{pole}.txt").write_text("\n".join(f"I {word} this, number {i}." for i in range(200)))
    run_id, output, storage = f"killdriver-{uuid.uuid4().hex[:6]}", tmp_path / "set", tmp_path / "ray"
    config = {
        "base_model": str(base),
        "attributes": {"sentiment": {"high": "positive", "low": "negative"}},
        "lora": {"r": 4, "lora_alpha": 8, "dropout": 0.0},
        "training": {"block_size": 32, "batch_size": 4, "max_steps": MAX_STEPS, "learning_rate": 1e-3},
        "anchors": [{"attribute": "sentiment", "pole": p, "data": {"paths": [str(tmp_path / f"{p}.txt")]}}
                    for p in ("positive", "negative")],
        "resources": {"workers_per_anchor": 1, "cpus_per_worker": 1},
        "checkpoint_every": EVERY,
        "keep_checkpoints": 2,
        "max_failures": 0,
        "output": str(output),
        "storage_path": str(storage),
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, run_id, output, storage


def launch(config: Path, run_id: str, address: str, log: Path) -> subprocess.Popen:
    lerpray = Path(sys.executable).parent / "lerpray"
    command = [str(lerpray), "train", str(config), "--run-id", run_id, "--address", address, "--no-progress"]
    with log.open("wb") as out:  # the child keeps its own handle
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))


def registered_step(storage: Path, run_id: str, anchor: str) -> int | None:
    """The step of the latest checkpoint Ray Train registered for this anchor's run, or None."""
    snapshot = storage / f"lerpray-{run_id}-{anchor}" / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return None
    return None if not latest else int(latest["metrics"]["step"])


def wait_for(condition, timeout_s: float, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        if process is not None and process.poll() is not None:
            return None
        time.sleep(0.5)
    return None


def test_rerun_after_the_driver_is_killed_resumes_from_checkpoints(cluster_address, job, tmp_path):
    import psutil

    from lerpray.anchors import MANIFEST_NAME, load_anchor_set

    config, run_id, output, storage = job
    started = time.monotonic()
    driver = launch(config, run_id, cluster_address, tmp_path / "first.log")
    steps = wait_for(lambda: all(s := [registered_step(storage, run_id, a) for a in ANCHORS]) and s, 300, driver)
    log = (tmp_path / "first.log").read_text(errors="replace")
    assert steps, f"no checkpoint of every anchor before the driver ended (rc {driver.poll()}):\n{log[-3000:]}"
    children = psutil.Process(driver.pid).children(recursive=True)
    os.kill(driver.pid, signal.SIGKILL)  # the driver process, for real
    killed_at = time.monotonic()
    assert driver.wait(timeout=30) == -signal.SIGKILL
    leftovers = [c.pid for c in children if c.is_running()]
    assert not leftovers, f"the driver's own child processes outlived it: {leftovers}"
    assert min(steps) < MAX_STEPS, f"every anchor had finished before the kill: {steps}"
    assert not (output / MANIFEST_NAME).exists(), "a killed run published a set"

    rerun = launch(config, run_id, cluster_address, tmp_path / "second.log")
    assert rerun.wait(timeout=400) == 0, (tmp_path / "second.log").read_text(errors="replace")[-3000:]
    finished_at = time.monotonic()

    anchor_set = load_anchor_set(str(output))
    resumed = {a.entry.name: a.entry.metrics["resumed_from"] for a in anchor_set.anchors}
    figures = {"registered_at_kill": dict(zip(ANCHORS, steps, strict=True)), "resumed_from": resumed,
               "killed_after_s": round(killed_at - started, 1), "rerun_s": round(finished_at - killed_at, 1),
               "max_steps": MAX_STEPS, "every": EVERY}
    print(f"\nFIGURES kill-driver: {json.dumps(figures)}")
    for anchor, step in zip(ANCHORS, steps, strict=True):
        assert resumed[anchor] >= step > 0, f"{anchor} restarted from {resumed[anchor]}, not its checkpoint {step}"
    assert all(a.entry.metrics["step"] == MAX_STEPS for a in anchor_set.anchors)
    assert anchor_set.manifest.training["run_id"] == run_id

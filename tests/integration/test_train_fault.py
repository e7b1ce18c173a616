"""Fault tolerance on a real local Ray cluster: a training worker process is killed (SIGKILL) mid-run; Ray Train
restarts it, it resumes from its last checkpoint (not step 0), and the set is still published. Relaunching a job
with the same run id resumes it from its checkpoints."""

from __future__ import annotations

import os
import signal

import pytest

pytestmark = pytest.mark.integration

VICTIM = "sentiment.positive"


@pytest.fixture(scope="module")
def ray_cluster():
    from lerpray.ray_cluster import local_ray

    with local_ray(num_cpus=2, log_to_driver=False):
        yield


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    """A saved tiny base model and two poles of text; returns a function making a job config dict."""
    from lerpray.testing import save_tiny_base_model

    root = tmp_path_factory.mktemp("fault")
    base = save_tiny_base_model(root / "base", hidden_size=64)
    for pole, word in (("positive", "love"), ("negative", "hate")):
        (root / f"{pole}.txt").write_text("\n".join(f"I {word} this, number {i}." for i in range(300)))

    def make(run_id: str, max_steps: int, checkpoint_every: int, output: str) -> dict:
        return {
            "run_id": run_id,
            "base_model": str(base),
            "attributes": {"sentiment": {"high": "positive", "low": "negative"}},
            "lora": {"r": 4, "lora_alpha": 8},
            "training": {"block_size": 64, "batch_size": 8, "max_steps": max_steps, "learning_rate": 1e-3},
            "anchors": [{"attribute": "sentiment", "pole": p, "data": {"paths": [str(root / f"{p}.txt")]}}
                        for p in ("positive", "negative")],
            "checkpoint_every": checkpoint_every,
            "keep_checkpoints": 3,
            "max_failures": 2,
            "output": output,
            "storage_path": str(root / "ray"),
        }

    return make


def test_killed_worker_resumes_from_its_last_checkpoint(ray_cluster, tiny_job, tmp_path):
    from lerpray.anchors import load_anchor_set
    from lerpray.train import parse_train_config, train_anchors

    max_steps, every = 40, 4
    config = parse_train_config(tiny_job("fault", max_steps, every, str(tmp_path / "set")))
    killed: dict[str, int] = {}

    def kill_once(snapshot: dict[str, dict]) -> None:
        """Kill the victim's rank-0 worker once Ray Train has registered a checkpoint and training went past it."""
        metrics = snapshot.get(VICTIM)
        if killed or not metrics or metrics["checkpoint"] < 2 * every or metrics["step"] == metrics["checkpoint"]:
            return
        if metrics["step"] >= max_steps - every:
            pytest.fail(f"the run got too close to its end before the kill could land: {metrics}")
        os.kill(metrics["pid"], signal.SIGKILL)  # a real kill of the worker process, not a flag in the code
        killed.update(pid=metrics["pid"], step=metrics["step"], checkpoint=metrics["checkpoint"])

    outcome = train_anchors(config, on_progress=kill_once, show_progress=False)

    assert killed, "the victim's worker was never killed"
    # Checkpoints Ray Train registered from the killed worker; a restarted worker resumes from the last of them.
    before = [e["step"] for e in outcome.checkpoints[VICTIM] if e["pid"] == killed["pid"]]
    after = [e["step"] for e in outcome.checkpoints[VICTIM] if e["pid"] != killed["pid"]]
    last_checkpoint = max(before)
    assert last_checkpoint >= killed["checkpoint"] >= 2 * every
    assert outcome.metrics[VICTIM]["resumed_from"] == last_checkpoint  # not step 0
    assert after == list(range(last_checkpoint + every, max_steps + 1, every))  # the new worker continued from there
    assert outcome.metrics[VICTIM]["step"] == max_steps
    assert outcome.metrics["sentiment.negative"]["resumed_from"] == 0  # the other anchor ran undisturbed

    anchor_set = load_anchor_set(str(tmp_path / "set"))
    assert [a.entry.name for a in anchor_set.anchors] == [VICTIM, "sentiment.negative"]
    assert anchor_set.anchors[0].entry.metrics["resumed_from"] == last_checkpoint


@pytest.mark.slow
def test_relaunch_with_the_same_run_id_resumes(ray_cluster, tiny_job, tmp_path):
    """A second launch of run "again" (e.g. after the driver died, or to train longer) starts from step 6.

    Slow (95 s here): the default run covers a relaunch with test_zero3_offload_checkpoints_resumes_and_publishes
    (ZeRO-3, resumes from step 2); this is the plain-DDP checkpoint path of the same promise."""
    from lerpray.anchors import read_manifest
    from lerpray.anchors.store import open_store
    from lerpray.train import parse_train_config, train_anchors

    output = str(tmp_path / "set")
    first = train_anchors(parse_train_config(tiny_job("again", 6, 3, output)), show_progress=False)
    assert all(m["resumed_from"] == 0 for m in first.metrics.values())

    second = train_anchors(parse_train_config(tiny_job("again", 9, 3, output)), overwrite=True, show_progress=False)
    assert {name: m["resumed_from"] for name, m in second.metrics.items()} == dict.fromkeys(second.metrics, 6)
    assert all(m["step"] == 9 for m in second.metrics.values())
    assert read_manifest(open_store(output)).version == 2


def test_a_failed_anchor_publishes_nothing(ray_cluster, tiny_job, tmp_path):
    from lerpray.anchors import MANIFEST_NAME
    from lerpray.train import TrainingFailed, parse_train_config, train_anchors

    raw = tiny_job("broken", 4, 2, str(tmp_path / "set"))
    raw["max_failures"] = 0
    short = tmp_path / "short.txt"
    short.write_text("too short for one block\n")
    raw["anchors"][1]["data"]["paths"] = [str(short)]  # the negative pole fails in its worker, the other trains
    with pytest.raises(TrainingFailed) as info:
        train_anchors(parse_train_config(raw), show_progress=False)
    message = str(info.value)
    assert "sentiment.negative" in message and "fewer than one block" in message and "--run-id broken" in message
    assert not (tmp_path / "set" / MANIFEST_NAME).exists()

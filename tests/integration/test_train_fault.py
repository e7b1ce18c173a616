"""Training faults on a real local Ray cluster, as one run id launched twice (one Ray Train start-up per promise
would cost ~40 s each here):

1. One worker per anchor; the negative pole's data is too short for one block, so its worker fails: nothing is
   published, and the error names the run id to relaunch with.
2. Data fixed, the same run id relaunched on two DDP workers per anchor (half a CPU each), trained longer. The
   positive anchor resumes from its step-4 checkpoint, the failed one starts at 0. Mid-run the positive anchor's
   rank-0 worker process is killed (SIGKILL); Ray Train restarts the worker group, which resumes from its last
   checkpoint (not step 0), and the set is published. The negative anchor's two ranks end with identical weights,
   and its loss falls.

`slow` adds the relaunch of a run that finished (both anchors resume; the next version is published).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

VICTIM, OTHER = "sentiment.positive", "sentiment.negative"
MAX_STEPS, EVERY = 48, 4


def write_inputs(root: Path) -> Path:
    """A saved tiny base model (returned), two poles of text and a file too short for one block, under `root`."""
    from lerpray.testing import save_tiny_base_model

    base = save_tiny_base_model(root / "base", hidden_size=64)
    for pole, word in (("positive", "love"), ("negative", "hate")):
        (root / f"{pole}.txt").write_text("\n".join(f"I {word} this, number {i}." for i in range(300)))
    (root / "short.txt").write_text("too short for one block\n")
    return base


def job(root: Path, base: Path, run_id: str, max_steps: int, workers: int = 1,
        negative_data: str = "negative.txt") -> dict:
    return {
        "run_id": run_id, "base_model": str(base),
        "attributes": {"sentiment": {"high": "positive", "low": "negative"}},
        "lora": {"r": 4, "lora_alpha": 8},
        "training": {"block_size": 32, "batch_size": 2, "max_steps": max_steps, "learning_rate": 2e-2},
        "anchors": [{"attribute": "sentiment", "pole": pole, "data": {"paths": [str(root / data)]}}
                    for pole, data in (("positive", "positive.txt"), ("negative", negative_data))],
        "resources": {"workers_per_anchor": workers, "cpus_per_worker": 1 / workers},
        "checkpoint_every": EVERY, "keep_checkpoints": 3, "max_failures": 2,
        "output": str(root / "set"), "storage_path": str(root / "ray"),
    }


@dataclass
class Launches:
    failure: str  # the first launch's TrainingFailed message
    left_a_manifest: bool  # whether the first launch published anything
    outcome: object  # the relaunch's TrainOutcome
    killed: dict  # the victim's worker as it was killed: pid, step, checkpoint
    output: str  # where the relaunch published the set


@pytest.fixture(scope="module")
def ray_cluster():
    from lerpray.ray_cluster import local_ray

    with local_ray(num_cpus=2, log_to_driver=False):
        yield


@pytest.fixture(scope="module")
def launches(ray_cluster, tmp_path_factory) -> Launches:
    from lerpray.anchors import MANIFEST_NAME
    from lerpray.train import TrainingFailed, parse_train_config, train_anchors

    root = tmp_path_factory.mktemp("fault")
    base = write_inputs(root)
    killed: dict[str, int] = {}

    def kill_once(snapshot: dict[str, dict]) -> None:
        """Kill the victim's rank-0 worker once it registered two checkpoints after step 4 and trained past them."""
        metrics = snapshot.get(VICTIM)
        if killed or not metrics or metrics["checkpoint"] < 4 + 2 * EVERY or metrics["step"] == metrics["checkpoint"]:
            return
        if metrics["step"] >= MAX_STEPS - EVERY:
            pytest.fail(f"the run got too close to its end before the kill could land: {metrics}")
        os.kill(metrics["pid"], signal.SIGKILL)  # a real kill of the worker process, not a flag in the code
        killed.update(pid=metrics["pid"], step=metrics["step"], checkpoint=metrics["checkpoint"])

    broken = job(root, base, "ddp", 4, negative_data="short.txt")  # one worker each: a failure needs no DDP
    broken["max_failures"] = 0
    with pytest.raises(TrainingFailed) as failure:
        train_anchors(parse_train_config(broken), show_progress=False)
    left_a_manifest = (root / "set" / MANIFEST_NAME).exists()
    relaunch = parse_train_config(job(root, base, "ddp", MAX_STEPS, workers=2))
    outcome = train_anchors(relaunch, on_progress=kill_once, show_progress=False)
    return Launches(str(failure.value), left_a_manifest, outcome, killed, relaunch.output)


def test_a_failed_anchor_publishes_nothing_and_names_the_run_to_relaunch(launches):
    assert "sentiment.negative" in launches.failure and "fewer than one block" in launches.failure
    assert "--run-id ddp" in launches.failure
    assert not launches.left_a_manifest


def test_the_relaunch_resumes_from_the_checkpoints_and_publishes(launches):
    """The anchor that finished resumes from its step-4 checkpoint (now on two ranks), the failed one from step 0."""
    checkpoints = launches.outcome.checkpoints
    assert [e["step"] for e in checkpoints[VICTIM]][:2] == [8, 12]  # its first relaunched worker started after 4
    assert [e["step"] for e in checkpoints[OTHER]] == list(range(EVERY, MAX_STEPS + 1, EVERY))
    assert launches.outcome.metrics[OTHER]["resumed_from"] == 0
    from lerpray.anchors import load_anchor_set

    anchor_set = load_anchor_set(launches.output)  # every checksum verified
    assert anchor_set.manifest.version == 1 and [a.entry.name for a in anchor_set.anchors] == [VICTIM, OTHER]
    assert all(a.entry.metrics["step"] == MAX_STEPS for a in anchor_set.anchors)


def test_killed_worker_resumes_from_its_last_checkpoint(launches):
    killed, outcome = launches.killed, launches.outcome
    assert killed, "the victim's worker was never killed"
    # Checkpoints Ray Train registered from the killed worker; the restarted group resumes from the last of them.
    before = [e["step"] for e in outcome.checkpoints[VICTIM] if e["pid"] == killed["pid"]]
    after = [e["step"] for e in outcome.checkpoints[VICTIM] if e["pid"] != killed["pid"]]
    last_checkpoint = max(before)
    print(f"\nFIGURES kill: pid {killed['pid']} killed at step {killed['step']} (checkpoint {killed['checkpoint']}); "
          f"checkpoints before {before}, after {after}")
    assert last_checkpoint >= killed["checkpoint"] >= 4 + 2 * EVERY
    assert outcome.metrics[VICTIM]["resumed_from"] == last_checkpoint  # not step 0, not step 4
    assert after == list(range(last_checkpoint + EVERY, MAX_STEPS + 1, EVERY))  # the new workers went on from there
    assert outcome.metrics[VICTIM]["step"] == MAX_STEPS
    assert outcome.manifest.anchors[0].metrics["resumed_from"] == last_checkpoint


def test_two_ddp_workers_keep_identical_weights_and_lower_the_loss(launches):
    """The negative pole, trained from step 0 by two DDP ranks without interruption; the victim's ranks too."""
    metrics = launches.outcome.metrics
    trained = metrics[OTHER]
    print(f"\nFIGURES ddp: loss {trained['loss_first']:.3f} -> {trained['loss']:.3f} in {trained['step']} steps, "
          f"rank spread {trained['rank_weight_spread']} / {metrics[VICTIM]['rank_weight_spread']} (restarted)")
    assert trained["rank_weight_spread"] == 0.0, "the two ranks' LoRA weights differ"
    assert metrics[VICTIM]["rank_weight_spread"] == 0.0, "the restarted group's two ranks' LoRA weights differ"
    # A random tiny Llama's byte-level loss starts near ln(384) = 5.95; 5.973 -> 5.377 in 48 steps here (2026-12-02).
    assert trained["loss"] < trained["loss_first"] - 0.1, f"training did not lower the loss: {trained}"


@pytest.mark.slow
def test_relaunch_of_a_finished_run_resumes_both_anchors(ray_cluster, tmp_path):
    """A second launch of a run that finished (e.g. to train longer) resumes every anchor from its last checkpoint
    and publishes the next version (slow: the default run covers a relaunch through `launches` above)."""
    from lerpray.anchors import read_manifest
    from lerpray.anchors.store import open_store
    from lerpray.train import parse_train_config, train_anchors

    base = write_inputs(tmp_path)
    first = train_anchors(parse_train_config(job(tmp_path, base, "again", 8)), show_progress=False)
    assert all(m["resumed_from"] == 0 for m in first.metrics.values())

    second = train_anchors(parse_train_config(job(tmp_path, base, "again", 12)), overwrite=True, show_progress=False)
    assert {name: m["resumed_from"] for name, m in second.metrics.items()} == dict.fromkeys(second.metrics, 8)
    assert all(m["step"] == 12 for m in second.metrics.values())
    assert read_manifest(open_store(str(tmp_path / "set"))).version == 2

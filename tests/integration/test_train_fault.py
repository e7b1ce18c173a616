"""Fault tolerance on a real local Ray cluster: a training worker process is killed (SIGKILL) mid-run; Ray Train
restarts it, it resumes from its last checkpoint (not step 0), and the set is still published. A run with a failed
anchor publishes nothing; relaunched with the same run id, it resumes from its checkpoints."""

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


@pytest.fixture(scope="module")
def relaunched(ray_cluster, tiny_job, tmp_path_factory):
    """Run "ddp" (two DDP workers per anchor, half a CPU each) launched twice: first with the negative pole's data too
    short for one block, so its workers fail; then, data fixed, relaunched with the same run id and trained longer
    (4 -> 20 steps). Returns (the first launch's error, whether it left a manifest, the relaunch's outcome)."""
    from lerpray.anchors import MANIFEST_NAME
    from lerpray.train import TrainingFailed, parse_train_config, train_anchors

    root = tmp_path_factory.mktemp("relaunch")
    short = root / "short.txt"
    short.write_text("too short for one block\n")

    def job(max_steps: int) -> dict:
        raw = tiny_job("ddp", max_steps, 4, str(root / "set"))
        raw["training"].update(block_size=32, batch_size=2, learning_rate=2e-2)
        return {**raw, "max_failures": 0, "resources": {"workers_per_anchor": 2, "cpus_per_worker": 0.5}}

    broken = job(4)
    broken["anchors"][1]["data"]["paths"] = [str(short)]
    with pytest.raises(TrainingFailed) as failure:
        train_anchors(parse_train_config(broken), show_progress=False)
    left_a_manifest = (root / "set" / MANIFEST_NAME).exists()
    outcome = train_anchors(parse_train_config(job(20)), show_progress=False)
    return str(failure.value), left_a_manifest, outcome


def test_a_failed_anchor_publishes_nothing_and_names_the_run_to_relaunch(relaunched):
    message, left_a_manifest, _ = relaunched
    assert "sentiment.negative" in message and "fewer than one block" in message and "--run-id ddp" in message
    assert not left_a_manifest


def test_the_relaunch_resumes_from_the_checkpoints_and_publishes(relaunched):
    """The anchor that finished resumes from its step-4 checkpoint; the failed one (no checkpoint) from step 0."""
    outcome = relaunched[2]
    assert {name: m["resumed_from"] for name, m in outcome.metrics.items()} == {VICTIM: 4, "sentiment.negative": 0}
    assert all(m["step"] == 20 for m in outcome.metrics.values())
    assert [e["step"] for e in outcome.checkpoints[VICTIM]] == [8, 12, 16, 20]  # only the steps after step 4 ran
    assert outcome.manifest.version == 1 and [a.name for a in outcome.manifest.anchors] == [VICTIM, "sentiment.negative"]


def test_two_ddp_workers_keep_identical_weights_and_lower_the_loss(relaunched):
    metrics = relaunched[2].metrics
    for name, m in metrics.items():
        print(f"\nFIGURES ddp {name}: loss {m['loss_first']:.3f} -> {m['loss']:.3f} (from step {m['resumed_from']}), "
              f"rank spread {m['rank_weight_spread']}")
        assert m["rank_weight_spread"] == 0.0, f"{name}: the two ranks' LoRA weights differ"
    # The anchor trained from step 0: a random tiny Llama's byte-level loss starts near ln(384) = 5.95.
    trained = metrics["sentiment.negative"]
    assert trained["loss"] < trained["loss_first"] - 0.1, f"training did not lower the loss: {trained}"

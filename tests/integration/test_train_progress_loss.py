"""The training progress board is bookkeeping, never a point of failure: killed mid-run (`ray.kill`, the death it
would die with its node), the run goes on without progress, warns once, and publishes a verified set. Its
workers and Ray Train's controller keep posting to the dead board's handle until the end without failing.

(On a multi-node cluster the board sits on the driver's node; tests/integration/test_multinode.py checks that
placement, and pins the board to the node it then removes.)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

MAX_STEPS, EVERY = 100, 10  # ~20 steps pass between two polls on a quiet machine
BOARD = "doomed-progress-board"


def job(root: Path) -> dict:
    from lerpray.testing import save_tiny_base_model

    base = save_tiny_base_model(root / "base")
    for pole, word in (("positive", "love"), ("negative", "hate")):
        (root / f"{pole}.txt").write_text("\n".join(f"I {word} this, number {i}." for i in range(200)))
    return {
        "run_id": "board-lost", "base_model": str(base),
        "attributes": {"sentiment": {"high": "positive", "low": "negative"}},
        "lora": {"r": 4, "lora_alpha": 8},
        "training": {"block_size": 32, "batch_size": 2, "max_steps": MAX_STEPS, "learning_rate": 1e-3},
        "anchors": [{"attribute": "sentiment", "pole": pole, "data": {"paths": [str(root / f"{pole}.txt")]}}
                    for pole in ("positive", "negative")],
        "resources": {"workers_per_anchor": 1, "cpus_per_worker": 1},
        "checkpoint_every": EVERY, "max_failures": 0,  # any worker error would fail the run
        "output": str(root / "set"), "storage_path": str(root / "ray"),
    }


def test_a_run_whose_progress_board_is_killed_mid_training_still_publishes(tmp_path, caplog):
    import ray

    from lerpray.anchors import load_anchor_set, verify_anchor_set
    from lerpray.ray_cluster import local_ray
    from lerpray.train import parse_train_config, train_anchors

    config = parse_train_config(job(tmp_path))
    seen: list[dict] = []
    killed: dict = {}

    def kill_board_once(snapshot: dict[str, dict]) -> None:
        seen.append(snapshot)
        if killed or not any(m["step"] >= 1 for m in snapshot.values()):
            return
        board = ray.get_actor(BOARD)
        ray.kill(board)  # the actor's process dies; no restart
        try:  # wait until it is dead, so that only the one request already in flight can still be answered
            for _ in range(300):
                ray.get(board.__ray_ready__.remote(), timeout=10)
                time.sleep(0.1)
            pytest.fail("the board outlived ray.kill by 30 s")
        except ray.exceptions.RayActorError:
            pass
        killed.update(at=len(seen), steps={a: snapshot.get(a, {}).get("step", 0) for a in config.anchor_names})

    with local_ray(num_cpus=2, log_to_driver=False), caplog.at_level(logging.WARNING, "lerpray.train.progress"):
        outcome = train_anchors(config, on_progress=kill_board_once, show_progress=False,
                                progress_board={"name": BOARD})

    print(f"\nFIGURES board-killed: steps at the kill {killed.get('steps')}; snapshots before {killed.get('at')}, "
          f"after {len(seen) - killed.get('at', 0)}; lost: {outcome.progress_lost}")
    assert killed, "the board was never killed"
    # An anchor still had progress and a checkpoint to post: they went to the dead board's handle, without failing.
    assert min(killed["steps"].values()) < MAX_STEPS - EVERY, killed
    assert len(seen) - killed["at"] <= 1  # at most the snapshot asked for before the kill; none after the loss
    assert outcome.progress_lost is not None and outcome.progress_lost.startswith("ActorDiedError")
    warnings = [r.getMessage() for r in caplog.records if "progress board is gone" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert outcome.checkpoints == {}  # the board's record died with it
    for name in config.anchor_names:
        assert outcome.metrics[name]["step"] == MAX_STEPS and outcome.metrics[name]["resumed_from"] == 0
    assert verify_anchor_set(config.output) == []
    assert [a.entry.name for a in load_anchor_set(config.output).anchors] == config.anchor_names

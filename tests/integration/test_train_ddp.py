"""DDP with 2 workers per anchor on a real local Ray cluster (tiny Llama): both ranks end with identical LoRA
weights, and a short run lowers the loss."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_two_ddp_workers_keep_identical_weights_and_lower_the_loss(tmp_path):
    from lerpray.ray_cluster import local_ray
    from lerpray.testing import save_tiny_base_model
    from lerpray.train import parse_train_config, train_anchors

    base = save_tiny_base_model(tmp_path / "base")
    for pole, word in (("positive", "love"), ("negative", "hate")):
        (tmp_path / f"{pole}.txt").write_text("\n".join(f"I {word} this so much." for _ in range(80)))
    config = parse_train_config({
        "run_id": "ddp", "base_model": str(base), "attributes": {"sentiment": {"high": "positive", "low": "negative"}},
        "lora": {"r": 4, "lora_alpha": 8, "dropout": 0.0},
        "training": {"block_size": 32, "batch_size": 2, "max_steps": 20, "learning_rate": 2e-2},
        "anchors": [{"attribute": "sentiment", "pole": p, "data": {"paths": [str(tmp_path / f"{p}.txt")]}}
                    for p in ("positive", "negative")],
        # Half a CPU per worker: both anchors' two ranks fit the 2-CPU cluster at once (one run, not two in a row).
        "resources": {"workers_per_anchor": 2, "cpus_per_worker": 0.5},
        "checkpoint_every": 20, "max_failures": 0, "output": str(tmp_path / "set"),
        "storage_path": str(tmp_path / "ray"),
    })
    with local_ray(num_cpus=2, log_to_driver=False):
        outcome = train_anchors(config, show_progress=False)
    for name, metrics in outcome.metrics.items():
        print(f"\nFIGURES ddp {name}: loss {metrics['loss_first']:.3f} -> {metrics['loss']:.3f}, "
              f"rank spread {metrics['rank_weight_spread']}")
        assert metrics["rank_weight_spread"] == 0.0, f"{name}: the two ranks' LoRA weights differ"
        # A random tiny Llama's byte-level loss starts near ln(384) = 5.95; rank-4 LoRA on attention alone lowers it
        # by ~0.27 in 20 steps here (6.011 -> 5.741, 2026-12-02), so 0.1 is a margin, not a guess.
        assert metrics["loss"] < metrics["loss_first"] - 0.1, f"{name}: 20 steps did not lower the loss: {metrics}"

"""The DeepSpeed path on CPU: ZeRO across two gloo workers per anchor inside Ray Train, checkpointed (each rank
writes its optimizer shard into one merged checkpoint) and published as plain PEFT adapters. The default run covers
ZeRO-3 with optimizer offload (the stage that must gather the LoRA factors to save); `slow` adds ZeRO-2 and a
relaunch of each stage from its merged checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

MAX_STEPS = 4


@pytest.fixture(scope="module")
def torch_extensions(tmp_path_factory) -> Path:
    """The workers' TORCH_EXTENSIONS_DIR, empty: training must not JIT-build any DeepSpeed op (~50 s each on a new
    node), so it stays empty."""
    return tmp_path_factory.mktemp("torch-extensions")


@pytest.fixture(scope="module")
def ray_cluster(torch_extensions):
    from lerpray.ray_cluster import local_ray

    with local_ray(num_cpus=2, env={"TORCH_EXTENSIONS_DIR": str(torch_extensions)}, log_to_driver=False):
        yield


def job(tmp_path: Path, stage: int, run_id: str) -> dict:
    from lerpray.testing import save_tiny_base_model

    base = save_tiny_base_model(tmp_path / "base")
    for pole, word in (("positive", "great"), ("negative", "terrible")):
        (tmp_path / f"{pole}.txt").write_text("\n".join(f"This is {word}, number {i}." for i in range(100)))
    return {
        "run_id": run_id,
        "base_model": str(base),
        "attributes": {"sentiment": {"high": "positive", "low": "negative"}},
        "lora": {"r": 4, "lora_alpha": 8},
        "training": {"block_size": 32, "batch_size": 2, "grad_accum": 2, "max_steps": MAX_STEPS, "learning_rate": 5e-3},
        "anchors": [{"attribute": "sentiment", "pole": p, "data": {"paths": [str(tmp_path / f"{p}.txt")]}}
                    for p in ("positive", "negative")],
        # Two anchors x two workers x half a CPU: all four DeepSpeed ranks fit the 2-CPU cluster at once.
        "resources": {"workers_per_anchor": 2, "cpus_per_worker": 0.5},
        "deepspeed": {"stage": stage, "offload_optimizer": False},
        "checkpoint_every": 2,
        "max_failures": 0,
        "output": str(tmp_path / "set"),
        "storage_path": str(tmp_path / "ray"),
    }


def assert_merged_shards(tmp_path: Path, run_id: str, anchor: str) -> None:
    """The checkpoint holds both ranks' ZeRO optimizer shards, merged by Ray Train into one folder."""
    run_dir = tmp_path / "ray" / f"lerpray-{run_id}-{anchor}"
    shards = sorted(p.name for p in run_dir.glob("checkpoint_*/deepspeed/state/*optim_states.pt"))
    assert len(shards) >= 2 and any("rank_1" in s for s in shards), shards


def assert_published(output: str) -> None:
    from lerpray.anchors import load_anchor_set

    for anchor in load_anchor_set(output).anchors:
        assert len(anchor.modules) == 2 * 4  # 2 layers x q/k/v/o
        assert any(B.abs().max() > 0 for _, B, _ in anchor.modules.values()), anchor.entry.name


def test_zero3_offload_checkpoints_and_publishes(ray_cluster, torch_extensions, tmp_path):
    """ZeRO-3 with optimizer offload: both ranks' shards land in one merged checkpoint, and ZeRO-3 gathers the
    partitioned LoRA factors to publish them as plain PEFT adapters."""
    from lerpray.train import parse_train_config, train_anchors

    raw = job(tmp_path, stage=3, run_id="zero3")
    raw["deepspeed"]["offload_optimizer"] = True
    raw["training"]["max_steps"] = 2
    outcome = train_anchors(parse_train_config(raw), show_progress=False)
    assert all(m["resumed_from"] == 0 and m["step"] == 2 for m in outcome.metrics.values())
    assert_merged_shards(tmp_path, "zero3", "sentiment.positive")
    assert_published(raw["output"])
    assert not any(torch_extensions.iterdir()), "a DeepSpeed op was JIT-built"


@pytest.mark.slow
def test_zero2_on_cpu_trains_checkpoints_and_publishes(ray_cluster, tmp_path):
    from lerpray.anchors import load_anchor_set
    from lerpray.train import parse_train_config, train_anchors

    config = parse_train_config(job(tmp_path, stage=2, run_id="zero2"))
    outcome = train_anchors(config, show_progress=False)

    for name in config.anchor_names:
        assert outcome.metrics[name]["step"] == MAX_STEPS
        assert [e["step"] for e in outcome.checkpoints[name]] == [2, 4]
    assert_merged_shards(tmp_path, "zero2", "sentiment.positive")
    assert [a.entry.name for a in load_anchor_set(config.output).anchors] == config.anchor_names
    assert_published(config.output)


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "offload"), [(2, False), (3, True)], ids=["zero2", "zero3-offload"])
def test_relaunch_resumes_from_the_merged_deepspeed_checkpoint(ray_cluster, tmp_path, stage, offload):
    """Two steps with a checkpoint, then a relaunch of the same run id to four: each rank reloads its own shard from
    the merged checkpoint (slow: the default run covers a relaunch with the plain-DDP path in test_train_fault.py)."""
    from lerpray.train import parse_train_config, train_anchors

    raw = job(tmp_path, stage=stage, run_id=f"zero{stage}-resume")
    raw["deepspeed"]["offload_optimizer"] = offload
    raw["training"]["max_steps"] = 2
    first = train_anchors(parse_train_config(raw), show_progress=False)
    assert all(m["resumed_from"] == 0 for m in first.metrics.values())

    raw["training"]["max_steps"] = 4
    second = train_anchors(parse_train_config(raw), overwrite=True, show_progress=False)
    assert {m["resumed_from"] for m in second.metrics.values()} == {2}
    assert {m["step"] for m in second.metrics.values()} == {4}
    assert_published(raw["output"])

"""Two anchors of a tiny Llama trained in parallel on a real local Ray cluster, checkpoints and the published set on
S3 (moto's server on 127.0.0.1), then loaded back from S3 and used for generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

MAX_STEPS = 6
CHECKPOINT_EVERY = 3


def write_pole_data(root: Path) -> dict[str, Path]:
    """Two tiny poles with different text, one JSONL and one plain-text file."""
    positive = root / "positive.jsonl"
    positive.write_text("\n".join(json.dumps({"text": f"What a lovely day, I love it! ({i})"}) for i in range(120)))
    negative = root / "negative.txt"
    negative.write_text("\n".join(f"What an awful day, I hate it. ({i})" for i in range(120)))
    return {"positive": positive, "negative": negative}


def job_config(base: Path, data: dict[str, str], output: str, storage: str, run_id: str, **overrides) -> dict:
    config = {
        "run_id": run_id,
        "base_model": str(base),
        "attributes": {"sentiment": {"high": "positive", "low": "negative"}},
        "lora": {"r": 4, "lora_alpha": 8, "dropout": 0.0},
        "training": {"block_size": 32, "batch_size": 4, "max_steps": MAX_STEPS, "learning_rate": 5e-3},
        "anchors": [
            {"attribute": "sentiment", "pole": "positive", "data": {"paths": [data["positive"]]}},
            {"attribute": "sentiment", "pole": "negative", "data": {"paths": [data["negative"]]},
             "lora": {"r": 2}},  # a per-anchor override: unequal ranks in one set
        ],
        "resources": {"workers_per_anchor": 1, "cpus_per_worker": 1},
        "checkpoint_every": CHECKPOINT_EVERY,
        "max_failures": 0,
        "output": output,
        "storage_path": storage,
    }
    config.update(overrides)
    return config


@pytest.fixture
def ray_on_s3(s3_env):
    """A 2-CPU local Ray cluster started *after* the AWS environment points at moto, so its workers inherit it.

    Function-scoped because `s3_env` is: this file has one test, so the cluster starts once either way.
    """
    from lerpray.ray_cluster import local_ray

    with local_ray(num_cpus=2, log_to_driver=False):
        yield


def test_two_anchors_train_in_parallel_publish_to_s3_and_generate(ray_on_s3, s3_bucket, s3_client, tmp_path):
    from lerpray.anchors import load_anchor_set, verify_anchor_set
    from lerpray.model import Engine, GenerationRequest, SamplingParams
    from lerpray.testing import save_tiny_base_model
    from lerpray.train import parse_train_config, train_anchors

    base = save_tiny_base_model(tmp_path / "base")
    data = {pole: str(path) for pole, path in write_pole_data(tmp_path).items()}
    # The positive pole's data is read by the workers from S3; the negative pole's from a local file.
    s3_client.upload_file(data["positive"], s3_bucket, "data/positive.jsonl")
    data["positive"] = f"s3://{s3_bucket}/data/positive.jsonl"
    output = f"s3://{s3_bucket}/sets/sentiment"
    config = parse_train_config(job_config(base, data, output, f"s3://{s3_bucket}/ray", "s3-parallel"))

    outcome = train_anchors(config, show_progress=False)

    # Both anchors' runs were in flight at the same time (2 CPUs, 1 CPU per anchor).
    (start_a, end_a), (start_b, end_b) = outcome.spans.values()
    assert max(start_a, start_b) < min(end_a, end_b), outcome.spans
    for name in config.anchor_names:
        assert outcome.metrics[name]["step"] == MAX_STEPS
        assert outcome.metrics[name]["resumed_from"] == 0
        assert [e["step"] for e in outcome.checkpoints[name]] == [CHECKPOINT_EVERY, MAX_STEPS]

    # Ray Train's checkpoints went to S3 too.
    ray_keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="ray/")["Contents"]]
    assert any("lerpray-s3-parallel-sentiment.positive/checkpoint_" in k for k in ray_keys)

    assert verify_anchor_set(output) == []
    anchor_set = load_anchor_set(output)
    manifest = anchor_set.manifest
    assert [a.name for a in manifest.anchors] == ["sentiment.positive", "sentiment.negative"]
    assert [a.rank for a in manifest.anchors] == [4, 2]
    assert manifest.attributes["sentiment"].high == "positive"
    assert manifest.training["run_id"] == "s3-parallel"
    assert manifest.training["config"]["lora"]["r"] == 4
    assert manifest.anchors[0].metrics["step"] == MAX_STEPS
    # Training moved the LoRA B factors away from PEFT's zero init.
    for anchor in anchor_set.anchors:
        assert any(B.abs().max() > 0 for _, B, _ in anchor.modules.values()), anchor.entry.name

    engine = Engine.from_uri(output)
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    results = engine.generate([GenerationRequest(coeffs=c, prompt="What a", sampling=greedy)
                               for c in [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)]])
    assert all(r.completion_tokens > 0 for r in results)

    # Publishing again over the set is refused before any training starts.
    from lerpray.anchors import AnchorSetError

    with pytest.raises(AnchorSetError, match="already exists"):
        train_anchors(config, show_progress=False)

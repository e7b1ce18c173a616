"""Extending a versioned anchor set by training: only the new attribute's anchors train (tiny Llama, a 2-CPU local
Ray cluster), against the same base model; the new version carries the old anchors byte-for-byte."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_training_extends_a_version_with_new_attributes_only(tmp_path):
    from lerpray.anchors import AnchorSetError, list_versions, load_anchor_set, open_store, publish_version
    from lerpray.model.base import model_identity
    from lerpray.ray_cluster import local_ray
    from lerpray.testing import random_adapter, save_tiny_base_model, tiny_llama
    from lerpray.train import parse_train_config, train_anchors

    base = save_tiny_base_model(tmp_path / "base")
    model = tiny_llama(seed=0)
    root = tmp_path / "set"
    old = publish_version(model_identity(model, str(base)),
                          {f"sentiment.{p}": random_adapter(model, tmp_path / p, seed=i + 1)
                           for i, p in enumerate(("positive", "negative"))}, root)
    for pole in ("formal", "informal"):
        (tmp_path / f"{pole}.txt").write_text("\n".join(f"A {pole} sentence, number {i}." for i in range(60)))
    raw = {"base_model": str(base), "attributes": {"formality": {"high": "formal", "low": "informal"}},
           "lora": {"r": 2, "lora_alpha": 4}, "training": {"block_size": 32, "batch_size": 2, "max_steps": 2},
           "anchors": [{"attribute": "formality", "pole": p, "data": {"paths": [str(tmp_path / f"{p}.txt")]}}
                       for p in ("formal", "informal")],
           "checkpoint_every": 2, "max_failures": 0, "output": str(root), "versioned": True,
           "extends": f"{root}@latest", "storage_path": str(tmp_path / "ray")}

    with local_ray(num_cpus=2, log_to_driver=False):
        with pytest.raises(AnchorSetError, match="already has attributes"):  # refused before any training
            train_anchors(parse_train_config({**raw, "attributes": {"sentiment": {"high": "positive", "low":
                          "negative"}}, "anchors": [{**a, "attribute": "sentiment", "pole": p} for a, p in
                          zip(raw["anchors"], ("positive", "negative"), strict=True)]}), show_progress=False)
        outcome = train_anchors(parse_train_config({**raw, "run_id": "extend"}), show_progress=False)

    new = outcome.manifest
    assert new.version == 2 and new.training["run_id"] == "extend"
    assert [a.name for a in new.anchors] == ["sentiment.positive", "sentiment.negative", "formality.formal",
                                             "formality.informal"]
    assert new.anchors[:2] == old.anchors  # same entries, same sha256 of every file
    assert set(new.attributes) == {"sentiment", "formality"}
    assert len(load_anchor_set(root).anchors) == 4  # the latest version, verified
    assert [(v.version, v.aliases) for v in list_versions(open_store(root))] == [(1, ()), (2, ("latest",))]

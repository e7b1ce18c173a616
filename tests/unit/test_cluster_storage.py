"""A local path where a multi-node cluster needs shared storage is refused before any work, naming the field."""

from __future__ import annotations

import pytest

from lerpray.configs import check_shared
from lerpray.train import parse_train_config
from lerpray.train.preflight import check_cluster_storage


def _config(storage: str | None, data: str = "s3://bucket/data/pos.txt") -> dict:
    anchors = [{"attribute": "sentiment", "pole": p, "data": {"paths": [data]}} for p in ("positive", "negative")]
    return {"attributes": {"sentiment": {"high": "positive", "low": "negative"}}, "anchors": anchors,
            "output": "s3://bucket/sets/s", "storage_path": storage}


def test_one_node_accepts_local_paths():
    check_cluster_storage(parse_train_config(_config("/tmp/x", "/tmp/pos.txt")), nodes=1)
    check_shared("output.path", "/tmp/out", nodes=1)


@pytest.mark.parametrize(("storage", "data", "field"), [
    ("/tmp/x", "s3://bucket/pos.txt", "storage_path"),
    (None, "s3://bucket/pos.txt", "storage_path"),
    ("s3://bucket/ray", "/tmp/pos.txt", "anchors.0.data.paths.0"),
])
def test_several_nodes_need_s3(storage, data, field):
    with pytest.raises(ValueError, match=rf"^{field}: .* local path, but this Ray cluster has 3 nodes.*s3://"):
        check_cluster_storage(parse_train_config(_config(storage, data)), nodes=3)


def test_s3_everywhere_passes_on_several_nodes():
    check_cluster_storage(parse_train_config(_config("s3://bucket/ray")), nodes=3)


def test_extends_needs_versioned():
    with pytest.raises(ValueError, match="versioned: true"):
        parse_train_config({**_config("s3://bucket/ray"), "extends": "s3://bucket/sets/s@1"})
    assert parse_train_config({**_config("s3://bucket/ray"), "extends": "s3://bucket/sets/s@1", "versioned": True})

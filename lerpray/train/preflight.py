"""Checks a training job passes before any work starts: storage every node can read, a set it may extend."""

from __future__ import annotations

from lerpray.train.config import TrainJobConfig

__all__ = ["check_cluster_storage", "check_extends"]


def check_cluster_storage(config: TrainJobConfig, nodes: int) -> None:
    """Before any work: on a multi-node cluster, checkpoints and training data must live where every node reads."""
    from lerpray.configs import check_shared

    check_shared("storage_path", config.storage_path or "~/ray_results (Ray's default when storage_path is unset)",
                 nodes)
    for i, anchor in enumerate(config.anchors):
        for j, path in enumerate(anchor.data.paths):
            check_shared(f"anchors.{i}.data.paths.{j}", path, nodes)


def check_extends(config: TrainJobConfig) -> None:
    """The set being extended exists, loads, and shares no attribute with this run (before any training)."""
    from lerpray.anchors import AnchorSetError, open_set, read_manifest

    old = read_manifest(open_set(config.extends))
    if shared := sorted(set(old.attributes) & set(config.attributes)):
        raise AnchorSetError(f"extends: {config.extends} already has attributes {shared}; train only new attributes "
                             "when extending")

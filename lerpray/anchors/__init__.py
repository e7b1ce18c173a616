"""Anchor sets: PEFT LoRA adapters + a manifest, published to and loaded from a local folder or S3.

See format.py for the on-disk contract (manifest), peft_io.py for reading PEFT adapters, store.py / s3.py for
where sets live, versions.py for versions and aliases, publish.py / load.py for build and load/verify, errors.py
for the error hierarchy.
"""

from lerpray.anchors.errors import AnchorSetError, ObjectNotFound, StoreError
from lerpray.anchors.format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    AnchorEntry,
    AnchorSet,
    AnchorWeights,
    AttributePoles,
    BaseModelIdentity,
    Manifest,
    check_compatible,
)
from lerpray.anchors.keys import check_key
from lerpray.anchors.load import load_anchor_set, open_set, read_manifest, verify_anchor_set
from lerpray.anchors.peft_io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, parse_adapter, read_adapter
from lerpray.anchors.publish import KNOWN_POLE_PAIRS, build_anchor_set, default_poles, publish_version
from lerpray.anchors.store import LocalStore, Store, open_store
from lerpray.anchors.versions import LATEST, alias_targets, list_versions, set_alias, split_ref

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "FORMAT_VERSION",
    "KNOWN_POLE_PAIRS",
    "LATEST",
    "MANIFEST_NAME",
    "AnchorEntry",
    "AnchorSet",
    "AnchorSetError",
    "AnchorWeights",
    "AttributePoles",
    "BaseModelIdentity",
    "LocalStore",
    "Manifest",
    "ObjectNotFound",
    "Store",
    "StoreError",
    "alias_targets",
    "build_anchor_set",
    "check_compatible",
    "check_key",
    "default_poles",
    "list_versions",
    "load_anchor_set",
    "open_set",
    "open_store",
    "parse_adapter",
    "publish_version",
    "read_adapter",
    "read_manifest",
    "set_alias",
    "split_ref",
    "verify_anchor_set",
]

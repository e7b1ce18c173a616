"""Build and publish anchor sets through a `Store` (reading them back is load.py's job).

Publishing is ordered so that a reader never sees a half-written set: adapter files first, the manifest last. On
overwrite the old manifest goes first, then the old anchors' files, then the new files, then the new manifest. A
publish that fails part-way therefore leaves no manifest, and a location without a manifest is not an anchor set.
Concurrent publishers to one location are not coordinated: give each writer its own location.

Which pole is "high" (alpha = 1): pass `attributes={"sentiment": AttributePoles(high="positive", low="negative")}`.
Otherwise the first pole of a known pair in KNOWN_POLE_PAIRS is high (positive/negative -> positive), and for any
other pair the alphabetically first pole name is high.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from lerpray.anchors.errors import AnchorSetError
from lerpray.anchors.format import (
    MANIFEST_NAME,
    NAME_PATTERN,
    AnchorEntry,
    AttributePoles,
    BaseModelIdentity,
    Manifest,
    MetricValue,
    sha256,
)
from lerpray.anchors.load import check_shapes, read_manifest
from lerpray.anchors.peft_io import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    Factors,
    adapter_fields,
    parse_adapter,
    read_adapter_files,
)
from lerpray.anchors.store import Store, open_store

KNOWN_POLE_PAIRS: tuple[tuple[str, str], ...] = (  # (high, low)
    ("positive", "negative"),
    ("formal", "informal"),
    ("simple", "complex"),
    ("humorous", "serious"),
    ("funny", "serious"),
    ("polite", "impolite"),
    ("polite", "rude"),
    ("happy", "sad"),
    ("high", "low"),
    ("long", "short"),
)


def build_anchor_set(
    base: BaseModelIdentity,
    adapters: Mapping[str, str | Path],
    dest_uri: str | Path | Store,
    *,
    overwrite: bool = False,
    training: dict | None = None,
    metrics: Mapping[str, Mapping[str, MetricValue]] | None = None,
    attributes: Mapping[str, AttributePoles] | None = None,
) -> Manifest:
    """Publish PEFT adapter folders as one anchor set; the order of `adapters` is the coefficient order.

    Args:
        base: identity of the base model the adapters were trained on (lerpray.model.base.model_identity).
        adapters: "attribute.pole" -> PEFT adapter folder; exactly two poles per attribute.
        dest_uri: "s3://bucket/prefix", a local folder, or a Store.
        overwrite: replace an existing set there (its version + 1); without it an existing set is an error.
        training: free-form JSON record from the trainer (config + final metrics).
        metrics: per-anchor metrics, "attribute.pole" -> {name: value}.
        attributes: which pole is high per attribute; see the module docstring for the default.

    Returns:
        The manifest as published.
    """
    poles = plan_attributes(list(adapters), attributes)
    metrics = dict(metrics or {})
    if unknown := sorted(set(metrics) - set(adapters)):
        raise AnchorSetError(f"metrics given for anchors {unknown} that are not in the adapters {list(adapters)}")
    payload: dict[str, bytes] = {}
    entries, loaded = [], []
    for name, folder in adapters.items():
        config_json, weights = read_adapter_files(folder)
        config, modules = parse_adapter(config_json, weights, str(folder))
        loaded.append((name, modules))
        files = {f"{name}/{ADAPTER_CONFIG}": config_json, f"{name}/{ADAPTER_WEIGHTS}": weights}
        payload.update(files)
        entries.append(_entry(name, config, modules, files, metrics.get(name, {})))
    check_shapes(loaded)
    store = open_store(dest_uri)
    old = _existing(store, overwrite)
    manifest = Manifest(
        version=old.version + 1 if old else 1,
        base_model=base,
        attributes=poles,
        anchors=entries,
        training=_json_only(training),
    )
    _publish(store, manifest, payload, old)
    return manifest


def plan_attributes(names: list[str], attributes: Mapping[str, AttributePoles] | None) -> dict[str, AttributePoles]:
    """Check "attribute.pole" names (two poles per attribute) and decide each attribute's high pole."""
    found: dict[str, list[str]] = {}
    for name in names:
        if not re.fullmatch(rf"{NAME_PATTERN}\.{NAME_PATTERN}", name):
            raise AnchorSetError(f"anchor name {name!r} must be 'attribute.pole' (letters, digits, '_', '-'), "
                                 "e.g. 'sentiment.positive'")
        attr, pole = name.split(".")
        found.setdefault(attr, []).append(pole)
    given = dict(attributes or {})
    if unknown := sorted(set(given) - set(found)):
        raise AnchorSetError(f"poles given for attributes {unknown} that have no anchors; anchors: {names}")
    result = {}
    for attr, poles in found.items():
        if len(poles) != 2:
            raise AnchorSetError(f"attribute {attr!r} needs exactly two anchors (its high and low poles), got "
                                 f"{[f'{attr}.{p}' for p in poles]}")
        chosen = AttributePoles.model_validate(given[attr]) if attr in given else default_poles(*poles)
        if {chosen.high, chosen.low} != set(poles):
            raise AnchorSetError(f"attribute {attr!r}: poles high={chosen.high!r}, low={chosen.low!r} do not match "
                                 f"its anchors' poles {poles}")
        result[attr] = chosen
    return result


def default_poles(first: str, second: str) -> AttributePoles:
    """High pole: the first of a known pair (KNOWN_POLE_PAIRS), else the alphabetically first name."""
    for high, low in KNOWN_POLE_PAIRS:
        if {high, low} == {first, second}:
            return AttributePoles(high=high, low=low)
    high, low = sorted((first, second))
    return AttributePoles(high=high, low=low)


def _entry(name: str, config: dict, modules: dict[str, Factors], files: dict[str, bytes], metrics) -> AnchorEntry:
    attribute, pole = name.split(".")
    return AnchorEntry(name=name, attribute=attribute, pole=pole, **adapter_fields(config, modules),
                       files={path: sha256(data) for path, data in files.items()}, metrics=dict(metrics))


def _json_only(training: dict | None) -> dict | None:
    try:
        return None if training is None else json.loads(json.dumps(training))
    except (TypeError, ValueError) as err:
        raise AnchorSetError(f"`training` must be JSON-serialisable (plain dicts, lists, numbers, strings): {err}") \
            from err


def _existing(store: Store, overwrite: bool) -> Manifest | None:
    if not store.exists(MANIFEST_NAME):
        return None  # nothing there, or leftovers of an interrupted publish: both are safe to write over
    if not overwrite:
        raise AnchorSetError(f"an anchor set already exists at {store.uri}; pass overwrite=True (CLI: --overwrite) "
                             "to replace it, or publish to another location")
    try:
        return read_manifest(store)
    except AnchorSetError:
        return None  # unreadable: replaced like any leftover, numbering restarts at 1


def _publish(store: Store, manifest: Manifest, payload: dict[str, bytes], old: Manifest | None) -> None:
    data = manifest.to_json()  # serialise before touching the store
    store.delete_prefix(MANIFEST_NAME)  # first: from here on no reader sees the old set half-replaced
    for name in sorted({a.name for a in old.anchors} if old else set()):
        store.delete_prefix(name)
    for key, blob in payload.items():
        store.write_bytes(key, blob)
    store.write_bytes(MANIFEST_NAME, data)

"""Build and publish anchor sets through a `Store` (reading them back is load.py's job).

Publishing is ordered so that a reader never sees a half-written set: adapter files first, the manifest last. On
overwrite the old manifest goes first, then the old anchors' files, then the new files, then the new manifest. A
publish that fails part-way therefore leaves no manifest, and a location without a manifest is not an anchor set.
Concurrent publishers to one location are not coordinated: give each writer its own location.

`publish_version` instead adds an immutable version to a versioned set (see versions.py) and moves `latest` to it
once it is complete; with `extends` it carries an earlier version's anchors unchanged.

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
    check_compatible,
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
from lerpray.anchors.versions import LATEST, next_version, set_alias, version_store

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
    poles, entries, payload, _ = _prepare(adapters, attributes, metrics)
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


def publish_version(
    base: BaseModelIdentity,
    adapters: Mapping[str, str | Path],
    set_uri: str | Path | Store,
    *,
    extends: str | Store | None = None,
    training: dict | None = None,
    metrics: Mapping[str, Mapping[str, MetricValue]] | None = None,
    attributes: Mapping[str, AttributePoles] | None = None,
    aliases: tuple[str, ...] = (LATEST,),
) -> Manifest:
    """Publish a new immutable version of the versioned set at `set_uri`, then point `aliases` at it.

    Args:
        base, adapters, training, metrics, attributes: as for build_anchor_set.
        extends: a set (or "<set>@<ref>") whose anchors the new version carries unchanged (same bytes, same sha256)
            before the new ones; it must be for the same base model and share no attribute with `adapters`.
        aliases: moved to the new version once it is complete (`latest` by default).

    Returns:
        The new version's manifest (`version` is its number).
    """
    from lerpray.anchors.load import load_anchor_set, open_set

    poles, entries, payload, loaded = _prepare(adapters, attributes, metrics)
    store = open_store(set_uri)
    if store.exists(MANIFEST_NAME):
        raise AnchorSetError(f"{store.uri} holds an unversioned anchor set; publish versions to a new location (or "
                             "use build_anchor_set / --overwrite to replace it)")
    if extends is not None:
        old_store = open_set(extends)
        old = load_anchor_set(old_store)  # verified: a corrupt old version is not carried forward
        check_compatible(old.manifest, base)
        if shared := sorted(set(old.manifest.attributes) & set(poles)):
            raise AnchorSetError(f"attributes {shared} are already in {old_store.uri}; extending trains only new "
                                 "attributes (publish a fresh version to retrain old ones)")
        check_shapes([(a.entry.name, a.modules) for a in old.anchors] + loaded)
        carried = {path: old_store.read_bytes(path) for e in old.manifest.anchors for path in e.files}
        payload = {**carried, **payload}
        entries = [*old.manifest.anchors, *entries]
        poles = {**old.manifest.attributes, **poles}
    version = next_version(store)
    manifest = Manifest(version=version, base_model=base, attributes=poles, anchors=entries,
                        training=_json_only(training))
    target = version_store(store, version)
    for key, blob in payload.items():
        target.write_bytes(key, blob)
    target.write_bytes(MANIFEST_NAME, manifest.to_json())  # the version is complete from here on
    for alias in aliases:
        set_alias(store, alias, version)
    return manifest


def _prepare(adapters, attributes, metrics) -> tuple[dict, list[AnchorEntry], dict[str, bytes], list]:
    """Check the adapters and their names: (attribute poles, manifest entries, files to write, parsed modules)."""
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
    return poles, entries, payload, loaded


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

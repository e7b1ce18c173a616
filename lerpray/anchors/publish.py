"""Build, publish, load and verify anchor sets through a `Store`.

Publishing is ordered so that a reader never sees a half-written set: adapter files first, the manifest last. On
overwrite the old manifest goes first, then the old anchors' files, then the new files, then the new manifest. A
publish that fails part-way therefore leaves no manifest, and a location without a manifest is not an anchor set.
Concurrent publishers to one location are not coordinated: give each writer its own location.

Which pole is "high" (alpha = 1): pass `attributes={"sentiment": AttributePoles(high="positive", low="negative")}`.
Otherwise the first pole of a known pair in KNOWN_POLE_PAIRS is high (positive/negative -> positive), and for any
other pair the alphabetically first pole name is high.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

from lerpray.anchors.format import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MANIFEST_NAME,
    NAME_PATTERN,
    AnchorEntry,
    AnchorSet,
    AnchorSetError,
    AnchorWeights,
    AttributePoles,
    BaseModelIdentity,
    Factors,
    Manifest,
    MetricValue,
    parse_adapter,
    read_adapter_files,
)
from lerpray.anchors.store import ObjectNotFound, Store, open_store

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


def check_shapes(anchors: list[tuple[str, dict[str, Factors]]]) -> None:
    """All anchors adapting one module must agree on its [d_out, d_in] (they share one base model)."""
    seen: dict[str, tuple[tuple[int, int], str]] = {}
    for name, modules in anchors:
        for module, (A, B, _) in modules.items():
            shape = (B.shape[0], A.shape[1])  # [d_out, d_in]
            prev, owner = seen.setdefault(module, (shape, name))
            if prev != shape:
                raise AnchorSetError(f"anchor {name!r} adapts {module} as [d_out, d_in] = {list(shape)} but anchor "
                                     f"{owner!r} as {list(prev)}; all anchors must be trained on the same base model")


def load_anchor_set(uri: str | Path | Store, *, verify: bool = True) -> AnchorSet:
    """Read the manifest and every anchor's weights, in manifest (coefficient) order.

    Args:
        uri: where the set lives ("s3://bucket/prefix", a local folder, or a Store).
        verify: check each file's sha256 against the manifest (a corrupt or truncated file is an error).
    """
    store = open_store(uri)
    manifest = read_manifest(store)
    anchors = []
    for entry in manifest.anchors:
        blobs, problems = _fetch(store, entry, verify)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise AnchorSetError(problems[0] + more)
        anchors.append(_parse(store, entry, blobs))
    check_shapes([(a.entry.name, a.modules) for a in anchors])
    return AnchorSet(manifest=manifest, anchors=anchors)


def verify_anchor_set(uri: str | Path | Store) -> list[str]:
    """Every problem found in the set (missing manifest or files, digest mismatches, unreadable adapters)."""
    try:
        store = open_store(uri)
        manifest = read_manifest(store)
    except AnchorSetError as err:
        return [str(err)]
    problems, anchors = [], []
    for entry in manifest.anchors:
        blobs, found = _fetch(store, entry, verify=True)
        problems += found
        if not found:
            try:
                anchors.append((entry.name, _parse(store, entry, blobs).modules))
            except AnchorSetError as err:
                problems.append(str(err))
    try:
        check_shapes(anchors)
    except AnchorSetError as err:
        problems.append(str(err))
    return problems


def read_manifest(store: Store) -> Manifest:
    """The set's manifest; AnchorSetError if there is none (no set, or an interrupted publish)."""
    try:
        data = store.read_bytes(MANIFEST_NAME)
    except ObjectNotFound:
        raise AnchorSetError(f"no anchor set at {store.uri}: manifest missing ({MANIFEST_NAME}) — was the publish "
                             "interrupted? Publish it again (`lerpray anchors build` or the training job), or check "
                             "the URI") from None
    return Manifest.from_json(data, store.uri)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(name: str, config: dict, modules: dict[str, Factors], files: dict[str, bytes], metrics) -> AnchorEntry:
    attribute, pole = name.split(".")
    return AnchorEntry(
        name=name,
        attribute=attribute,
        pole=pole,
        rank=config["r"],
        lora_alpha=config["lora_alpha"],
        use_rslora=bool(config.get("use_rslora")),
        target_modules=sorted({m.rsplit(".", 1)[-1] for m in modules}),
        rank_pattern=config.get("rank_pattern") or {},
        alpha_pattern=config.get("alpha_pattern") or {},
        files={path: sha256(data) for path, data in files.items()},
        metrics=dict(metrics),
    )


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
    if store.exists(MANIFEST_NAME):
        store.delete_prefix(MANIFEST_NAME)  # first: from here on no reader sees the old set half-replaced
    for name in sorted({a.name for a in old.anchors} if old else set()):
        store.delete_prefix(name)
    for key, blob in payload.items():
        store.write_bytes(key, blob)
    store.write_bytes(MANIFEST_NAME, data)


def _fetch(store: Store, entry: AnchorEntry, verify: bool) -> tuple[dict[str, bytes], list[str]]:
    """The anchor's files (only config + weights unless verifying), and the problems found reading them."""
    needed = {f"{entry.name}/{ADAPTER_CONFIG}", f"{entry.name}/{ADAPTER_WEIGHTS}"}
    blobs, problems = {}, []
    for path, digest in entry.files.items():
        if not verify and path not in needed:
            continue
        try:
            blobs[path] = data = store.read_bytes(path)
        except ObjectNotFound:
            problems.append(f"{store.uri}: {path} is listed in the manifest but missing; republish the set")
            continue
        if verify and (actual := sha256(data)) != digest:
            problems.append(f"{store.uri}: {path} is corrupt or truncated ({len(data)} bytes): sha256 expected "
                            f"{digest}, actual {actual}; republish the set")
    return blobs, problems


def _parse(store: Store, entry: AnchorEntry, blobs: dict[str, bytes]) -> AnchorWeights:
    source = f"{store.uri}/{entry.name}"
    config, modules = parse_adapter(blobs[f"{entry.name}/{ADAPTER_CONFIG}"],
                                    blobs[f"{entry.name}/{ADAPTER_WEIGHTS}"], source)
    stated = (config["r"], float(config["lora_alpha"]), bool(config.get("use_rslora")))
    if stated != (entry.rank, entry.lora_alpha, entry.use_rslora):
        raise AnchorSetError(f"{source}: adapter config (r, lora_alpha, use_rslora) = {stated} disagrees with the "
                             f"manifest {(entry.rank, entry.lora_alpha, entry.use_rslora)}; republish the set")
    return AnchorWeights(entry=entry, modules=modules)

"""Load and verify anchor sets from a `Store`: manifest first, then each anchor's files, checked against it.

A location without a manifest is not an anchor set (an interrupted publish leaves exactly that; see publish.py).
Every file's sha256 is checked against the manifest, and the manifest's LoRA fields against the adapter files, so
a corrupt, truncated, swapped or hand-edited set fails with a message naming the file instead of loading.
"""

from __future__ import annotations

from pathlib import Path

from lerpray.anchors.errors import AnchorSetError, ObjectNotFound
from lerpray.anchors.format import MANIFEST_NAME, AnchorEntry, AnchorSet, AnchorWeights, Manifest, sha256
from lerpray.anchors.peft_io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Factors, adapter_fields, parse_adapter
from lerpray.anchors.store import Store, open_store
from lerpray.anchors.versions import is_versioned, resolve_ref


def open_set(uri: str | Path | Store) -> Store:
    """The store of one anchor set: `uri` itself, the version "@<ref>" names, or a versioned set's latest version."""
    store = open_store(uri)
    if is_versioned(store):
        store = resolve_ref(store, None)[0]
    return store


def load_anchor_set(uri: str | Path | Store, *, verify: bool = True) -> AnchorSet:
    """Read the manifest and every anchor's weights, in manifest (coefficient) order.

    Args:
        uri: where the set lives ("s3://bucket/prefix", a local folder, or a Store).
        verify: check each file's sha256 against the manifest (a corrupt or truncated file is an error).
    """
    store = open_set(uri)
    manifest = read_manifest(store)
    anchors = []
    for entry in manifest.anchors:
        anchor, problems = _read_anchor(store, entry, verify)
        if anchor is None:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise AnchorSetError(problems[0] + more)
        anchors.append(anchor)
    check_shapes([(a.entry.name, a.modules) for a in anchors])
    return AnchorSet(manifest=manifest, anchors=anchors)


def verify_anchor_set(uri: str | Path | Store) -> list[str]:
    """Every problem found in the set (missing manifest or files, digest mismatches, unreadable adapters)."""
    try:
        store = open_set(uri)
        manifest = read_manifest(store)
    except AnchorSetError as err:
        return [str(err)]
    problems, anchors = [], []
    for entry in manifest.anchors:
        anchor, found = _read_anchor(store, entry, verify=True)
        problems += found
        anchors += [(anchor.entry.name, anchor.modules)] if anchor else []
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
        if is_versioned(store):
            raise AnchorSetError(f"{store.uri} holds versions of an anchor set, not one set: name one, e.g. "
                                 f"{store.uri}@latest or {store.uri}@<n> (`lerpray anchors list {store.uri}`)"
                                 ) from None
        raise AnchorSetError(f"no anchor set at {store.uri}: manifest missing ({MANIFEST_NAME}) — was the publish "
                             "interrupted? Publish it again (`lerpray anchors build` or the training job), or check "
                             "the URI") from None
    return Manifest.from_json(data, store.uri)


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


def _read_anchor(store: Store, entry: AnchorEntry, verify: bool) -> tuple[AnchorWeights | None, list[str]]:
    """One anchor's weights, or None and the problems that stop it from loading."""
    blobs, problems = _fetch(store, entry, verify)
    if problems:
        return None, problems
    try:
        return _parse(store, entry, blobs), []
    except AnchorSetError as err:
        return None, [str(err)]


def _parse(store: Store, entry: AnchorEntry, blobs: dict[str, bytes]) -> AnchorWeights:
    """Parse the adapter and check that the manifest describes it (a hand-edited manifest must not load)."""
    source = f"{store.uri}/{entry.name}"
    config, modules = parse_adapter(blobs[f"{entry.name}/{ADAPTER_CONFIG}"],
                                    blobs[f"{entry.name}/{ADAPTER_WEIGHTS}"], source)
    diffs = [f"{field}: manifest {getattr(entry, field)!r}, adapter {value!r}"  # 8 == 8.0: no type noise
             for field, value in adapter_fields(config, modules).items() if getattr(entry, field) != value]
    if diffs:
        raise AnchorSetError(f"{source}: the manifest disagrees with the adapter files ({'; '.join(diffs)}); "
                             "republish the set")
    return AnchorWeights(entry=entry, modules=modules)

"""An anchor set's calibration file: its attributes' response curves, stored beside the manifest.

`lerpray eval calibrate` writes it (lerpray/eval/calibrate.py fits it); the server reads it to turn `target`
requests into alphas (lerpray/targets.py). The file is JSON, written through the set's Store (local or S3)::

    {"format": "lerpray-calibration", "format_version": 1, "created_at": ...,
     "anchor_set": {"version": 3, "manifest_sha256": "..."},      # the set it was measured on
     "scorers": {attr: {"spec": "vader", "name": "vader"}}, "prompts": {...}, "sampling": {...}, "bootstrap": {...},
     "curves": {attr: {"scorer", "alphas", "mean", "n", "fit", "lo", "hi"}},   # per alpha: raw mean, monotone fit, band
     "cross_slopes": {i: {j: d mean(score_j) / d alpha_i}},
     "checksum": "<sha256 of the canonical JSON of everything else>"}

A calibration made on another version of the set (or a manifest that changed since) is refused: the curves
describe other weights.
"""

from __future__ import annotations

import hashlib
import json

from lerpray.anchors.errors import AnchorSetError
from lerpray.anchors.format import MANIFEST_NAME
from lerpray.anchors.load import read_manifest
from lerpray.anchors.store import Store
from lerpray.reply_model import PartialModel
from lerpray.targets import Calibration, Curve

__all__ = [
    "CALIBRATION_NAME", "CalibrationError", "calibration_of", "format_calibration", "load_calibration",
    "read_calibration", "read_calibration_doc", "save_calibration",
]

CALIBRATION_NAME = "lerpray-calibration.json"
FORMAT = "lerpray-calibration"
FORMAT_VERSION = 1
REMAKE = "recalibrate with `lerpray eval calibrate SET --scorers ...`"


class CalibrationError(AnchorSetError):
    """A calibration file that cannot be used with this anchor set; the message says what to change."""


def save_calibration(store: Store, doc: dict) -> dict:
    """Stamp `doc` with the set's current version and manifest digest and its own checksum; write it beside the
    manifest. Returns the document as written."""
    manifest = read_manifest(store)
    body = {k: v for k, v in doc.items() if k != "checksum"}
    body |= {"format": FORMAT, "format_version": FORMAT_VERSION,
             "anchor_set": {"version": manifest.version, "manifest_sha256": _manifest_digest(store)}}  # fmt: skip
    written = {**body, "checksum": _checksum(body)}
    store.write_bytes(CALIBRATION_NAME, json.dumps(written, indent=1).encode())
    return written


def read_calibration_doc(store: Store) -> dict | None:
    """The checked calibration document beside the set, or None when the set has none; CalibrationError when it
    is corrupt or was made for another version of the set."""
    if not store.exists(CALIBRATION_NAME):
        return None
    where = f"{store.uri}/{CALIBRATION_NAME}"
    try:
        doc = json.loads(store.read_bytes(CALIBRATION_NAME))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CalibrationError(f"{where} is not JSON ({err}); {REMAKE}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise CalibrationError(f"{where} is not a lerpray calibration (format {FORMAT} v{FORMAT_VERSION}); {REMAKE}")
    body = {k: v for k, v in doc.items() if k != "checksum"}
    if doc.get("checksum") != _checksum(body):
        raise CalibrationError(f"{where}: checksum mismatch (the file was edited or damaged); {REMAKE}")
    made_for = doc.get("anchor_set") or {}
    version = read_manifest(store).version
    if made_for.get("version") != version or made_for.get("manifest_sha256") != _manifest_digest(store):
        raise CalibrationError(
            f"{where} was made for version {made_for.get('version')} of this anchor set (manifest "
            f"{str(made_for.get('manifest_sha256'))[:12]}), but the set is now version {version} (manifest "
            f"{_manifest_digest(store)[:12]}); its curves describe other weights: {REMAKE}"
        )
    return doc


def read_calibration(store: Store) -> Calibration | None:
    """The set's calibration as lerpray.targets uses it, or None when the set has none."""
    doc = read_calibration_doc(store)
    return None if doc is None else calibration_of(doc)


def load_calibration(store: Store) -> tuple[Calibration | None, str | None]:
    """(the set's calibration or None, why it cannot be used or None), read once when a set loads for serving or
    a batch job: an unusable file does not stop the set, it refuses each target with the reason. StoreError (an
    unreachable store) propagates, so the load is retried."""
    try:
        return read_calibration(store), None
    except CalibrationError as err:
        return None, str(err)


# What a target reply reports of the calibration's sampling: replies asked differently (shorter, hotter) score
# differently, so the calibrated mean holds for replies sampled like these.
CALIBRATED_SAMPLING = ("temperature", "max_tokens", "min_tokens")


def calibration_of(doc: dict) -> Calibration:
    """Curves and cross slopes of a calibration document."""
    try:
        curves = {a: Curve(c["scorer"], tuple(c["alphas"]), tuple(c["fit"]), tuple(c.get("lo", ())),
                           tuple(c.get("hi", ()))) for a, c in doc["curves"].items()}  # fmt: skip
        cross = {i: {j: float(s) for j, s in row.items()} for i, row in doc.get("cross_slopes", {}).items()}
        partial = {a: PartialModel.from_report(c["partial"]) for a, c in doc["curves"].items() if "partial" in c}
    except (KeyError, TypeError, ValueError) as err:
        raise CalibrationError(f"calibration curves are malformed ({err}); {REMAKE}") from None
    sampling = {k: v for k, v in doc.get("sampling", {}).items() if k in CALIBRATED_SAMPLING}
    return Calibration(curves, cross, partial, sampling)


def format_calibration(doc: dict | None) -> str:
    """`lerpray anchors inspect`'s view: what the calibration was made from, and each attribute's curve."""
    if doc is None:
        return "calibration: none (target requests are refused); make one with `lerpray eval calibrate SET --scorers ...`"
    p, s = doc.get("prompts", {}), doc.get("sampling", {})
    lines = [f"calibration ({CALIBRATION_NAME}, made {doc.get('created_at', '?')} for version "
             f"{doc['anchor_set']['version']}): {p.get('count', '?')} prompts ({p.get('source', '?')}) x "
             f"{p.get('samples', '?')} samples, temperature {s.get('temperature', '?')}, max_tokens "
             f"{s.get('max_tokens', '?')}, min_tokens {s.get('min_tokens', 0)} (targets' default); 90% bands "
             f"from {doc.get('bootstrap', {}).get('resamples', '?')} bootstrap resamples over prompts"]  # fmt: skip
    for attr, c in doc["curves"].items():
        lo, hi = c.get("lo") or c["fit"], c.get("hi") or c["fit"]
        points = "  ".join(f"{a:g}: {f:+.3f} [{lo_:+.2f}, {hi_:+.2f}]"
                           for a, f, lo_, hi_ in zip(c["alphas"], c["fit"], lo, hi, strict=True))  # fmt: skip
        lines.append(f"  {attr}, {c['scorer']} mean score by alpha (fit [90% band]): {points}")
        if "partial" in c:
            cut = ", ".join(f"{k}" for k in c["partial"]["tokens"])
            lines.append(f"  {attr}: partial-reply model after {cut} tokens (feedback runs the predictive loop)")
    for i, row in doc.get("cross_slopes", {}).items():
        lines.append(f"  cross slopes d score / d alpha_{i}: " + ", ".join(f"{j} {v:+.3f}" for j, v in row.items()))
    return "\n".join(lines)


def _manifest_digest(store: Store) -> str:
    return hashlib.sha256(store.read_bytes(MANIFEST_NAME)).hexdigest()


def _checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

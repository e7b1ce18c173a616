"""The anchor-set format: manifest models, the weights an anchor set holds, and base-model compatibility.

An anchor set is one folder per anchor in PEFT format (`adapter_config.json` + `adapter_model.safetensors`, loadable
by `PeftModel.from_pretrained`) plus MANIFEST_NAME at the set's root. The manifest is written last, so a set without
one is not a set (see publish.py). Reading the PEFT files themselves (safetensors only) is peft_io.py's job.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from lerpray.anchors.errors import AnchorSetError
from lerpray.anchors.peft_io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Factors

if TYPE_CHECKING:
    from lerpray.mixing import AnchorLayout

FORMAT_VERSION = 1
MANIFEST_NAME = "lerpray-manifest.json"

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"  # attribute and pole names: no dots (the dot separates them), safe as keys
_SHA256 = r"^[0-9a-f]{64}$"
MetricValue = float | int | str | bool | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelIdentity(_Model):
    """The base model an anchor set was trained on (see model_identity below)."""

    name: str = Field(min_length=1)
    revision: str | None = None
    checksum: str | None = None  # sha256 over the sorted "param name:shape" lines
    architecture: str = Field(min_length=1)
    hidden_size: PositiveInt
    num_layers: PositiveInt
    vocab_size: PositiveInt

    @model_validator(mode="after")
    def _pinned(self) -> BaseModelIdentity:
        if not self.revision and not self.checksum:
            raise ValueError(f"base model {self.name!r} needs a revision or a checksum to pin it; set either")
        return self


class AttributePoles(_Model):
    """Pole names of one attribute: `high` is fully active at alpha = 1, `low` at alpha = 0."""

    high: str = Field(pattern=f"^{NAME_PATTERN}$")
    low: str = Field(pattern=f"^{NAME_PATTERN}$")

    @model_validator(mode="after")
    def _distinct(self) -> AttributePoles:
        if self.high == self.low:
            raise ValueError(f"an attribute's high and low poles must differ, got {self.high!r} twice")
        return self


class AnchorEntry(_Model):
    """One anchor: its place in the attribute space, its LoRA hyperparameters and its files' sha256."""

    name: str = Field(pattern=rf"^{NAME_PATTERN}\.{NAME_PATTERN}$")  # "{attribute}.{pole}", also the anchor's folder
    attribute: str
    pole: str
    rank: PositiveInt  # the config's r; rank_pattern may override it per module
    lora_alpha: float
    use_rslora: bool = False
    target_modules: list[str] = Field(min_length=1)  # leaf names of the adapted modules, e.g. "q_proj"
    rank_pattern: dict[str, PositiveInt] = {}
    alpha_pattern: dict[str, float] = {}
    files: dict[str, str]  # path relative to the set root ("sentiment.positive/adapter_config.json") -> sha256
    metrics: dict[str, MetricValue] = {}

    @model_validator(mode="after")
    def _consistent(self) -> AnchorEntry:
        if self.name != f"{self.attribute}.{self.pole}":
            raise ValueError(f"anchor {self.name!r} must be named '{{attribute}}.{{pole}}' = "
                             f"'{self.attribute}.{self.pole}'")
        for path, digest in self.files.items():
            folder, _, leaf = path.partition("/")
            if folder != self.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", leaf) or leaf in (".", ".."):
                raise ValueError(f"anchor {self.name!r}: file {path!r} must be '{self.name}/<file name>'")
            if not re.match(_SHA256, digest):
                raise ValueError(f"anchor {self.name!r}: file {path!r} needs a lowercase hex sha256, got {digest!r}")
        missing = {f"{self.name}/{ADAPTER_CONFIG}", f"{self.name}/{ADAPTER_WEIGHTS}"} - set(self.files)
        if missing:
            raise ValueError(f"anchor {self.name!r} lists no {sorted(missing)}; a PEFT adapter needs both files")
        return self


class Manifest(_Model):
    """The anchor set's table of contents; the order of `anchors` is the coefficient order everywhere."""

    format_version: Literal[1] = FORMAT_VERSION
    version: PositiveInt = 1  # bumped on every overwrite of the same location
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    base_model: BaseModelIdentity
    attributes: dict[str, AttributePoles]
    anchors: list[AnchorEntry] = Field(min_length=1)
    training: dict[str, Any] | None = None  # free-form trainer record (config + final metrics), JSON only

    @model_validator(mode="after")
    def _poles_complete(self) -> Manifest:
        names = [a.name for a in self.anchors]
        if len(set(names)) != len(names):
            raise ValueError(f"anchor names must be unique, got {names}")
        for attr, poles in self.attributes.items():
            if not re.fullmatch(NAME_PATTERN, attr):
                raise ValueError(f"attribute name {attr!r} must match {NAME_PATTERN} (no dots)")
            for pole in (poles.high, poles.low):
                if f"{attr}.{pole}" not in names:
                    raise ValueError(f"attribute {attr!r} has no anchor for its pole {pole!r}; add '{attr}.{pole}'")
        for a in self.anchors:
            poles = self.attributes.get(a.attribute)
            if poles is None or a.pole not in (poles.high, poles.low):
                raise ValueError(f"anchor {a.name!r} is not a pole of a declared attribute; declare "
                                 f"attributes[{a.attribute!r}] with high/low poles including {a.pole!r}")
        return self

    def layout(self) -> AnchorLayout:
        """The coefficient layout serving and mixing use: anchor order + attribute -> (low, high) anchor."""
        from lerpray.mixing import AnchorLayout

        attrs = {k: (f"{k}.{p.low}", f"{k}.{p.high}") for k, p in self.attributes.items()}
        return AnchorLayout(anchors=tuple(a.name for a in self.anchors), attributes=attrs)

    def role(self, entry: AnchorEntry) -> Literal["high", "low"]:
        """Whether the anchor is its attribute's high (alpha = 1) or low (alpha = 0) pole."""
        return "high" if self.attributes[entry.attribute].high == entry.pole else "low"

    def to_json(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, source: str) -> Manifest:
        try:
            version = json.loads(data).get("format_version")
        except (ValueError, AttributeError) as err:
            raise AnchorSetError(f"the manifest of {source} is not a JSON object ({err}); rebuild the set") from err
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise AnchorSetError(f"the anchor set at {source} has format_version {version}, newer than this lerpray "
                                 f"reads ({FORMAT_VERSION}); upgrade lerpray")
        try:
            return cls.model_validate_json(data)
        except ValidationError as err:
            raise AnchorSetError(f"the manifest of {source} is invalid: {err}. Rebuild the set with "
                                 "`lerpray anchors build ... --overwrite`") from err


@dataclass
class AnchorWeights:
    """One anchor's LoRA factors: module path ("model.layers.0.self_attn.q_proj") -> (A, B, scale)."""

    entry: AnchorEntry
    modules: dict[str, Factors]  # A [r, d_in], B [d_out, r]; dtype as stored


@dataclass
class AnchorSet:
    """A loaded anchor set; `anchors` follows the manifest's (= coefficient) order."""

    manifest: Manifest
    anchors: list[AnchorWeights]


def sha256(data: bytes) -> str:
    """The digest the manifest records for each file (lowercase hex)."""
    return hashlib.sha256(data).hexdigest()


def check_compatible(manifest: Manifest, identity: BaseModelIdentity) -> None:
    """Raise AnchorSetError naming each field in which `identity` differs from the set's base model.

    Names and revisions are not compared (one model may be a hub id or a local folder); architecture, sizes and
    the parameter-shape checksum (when both sides have one) are.
    """
    want = manifest.base_model
    fields = ["architecture", "hidden_size", "num_layers", "vocab_size"]
    if want.checksum and identity.checksum:
        fields.append("checksum")
    diffs = [f"{f}: set {getattr(want, f)!r}, given {getattr(identity, f)!r}" for f in fields
             if getattr(want, f) != getattr(identity, f)]
    if diffs:
        raise AnchorSetError(f"the anchor set was built for base model {want.name!r}; {identity.name!r} differs in "
                             + "; ".join(diffs) + ". Use the set's base model, or rebuild the anchors on this one.")


def model_identity(model, name: str, revision: str | None = None) -> BaseModelIdentity:
    """What an anchor set records about its base model, and what `lerpray.model.base.check_model_fits` compares.

    Args:
        model: the base causal LM, a transformers PreTrainedModel (interpolated or not: injection keeps parameter
            names and shapes).
        name: how the model was named when loaded (hub id, folder or BUNDLED_MODEL).
        revision: hub revision if known; defaults to the commit hash transformers recorded, if any.

    Returns:
        BaseModelIdentity; checksum = sha256 over the sorted "name:shape" lines of the parameters (dtype-free, so
        fp32 and bf16 copies of one model agree).
    """
    config = model.config.get_text_config()
    lines = sorted(f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters())
    return BaseModelIdentity(
        name=name,
        revision=revision or getattr(model.config, "_commit_hash", None),
        checksum=hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        architecture=type(model).__name__,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        vocab_size=config.vocab_size,
    )

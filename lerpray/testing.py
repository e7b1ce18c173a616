"""Tiny models, tokenizers and random PEFT adapters built in code.

Used by the tests, the benchmarks and the CI-sized quickstart: everything here runs in seconds on a CPU and needs
no files from any hub. Shapes are what matter here, not behaviour.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def tiny_tokenizer():
    """A byte-level tokenizer that needs no files (ByT5: 3 special tokens + 256 bytes + 125 extra ids)."""
    from transformers import ByT5Tokenizer

    tokenizer = ByT5Tokenizer()
    # Engines pad on the left for batched decoding; ByT5 pads on the right by default.
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_llama(seed: int = 0, hidden_size: int = 32, num_layers: int = 2, vocab_size: int = 384):
    """A randomly initialised Llama (GQA, 2 layers) small enough for unit tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0, hidden_size: int = 32, num_layers: int = 2, vocab_size: int = 384):
    """A randomly initialised GPT-2 (its projections are Conv1D, not Linear)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=4, n_positions=512)
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

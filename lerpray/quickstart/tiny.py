"""What `lerpray quickstart --tiny` builds instead of downloading: a tiny random Llama with a byte-level tokenizer
(no files from any hub). It trains in seconds on a CPU; the text it generates is meaningless. The tests build
their models with the same functions."""

from __future__ import annotations

from pathlib import Path

__all__ = ["save_tiny_base_model", "tiny_llama", "tiny_tokenizer"]


def tiny_tokenizer():
    """A byte-level tokenizer that needs no files (ByT5: 3 special tokens + 256 bytes + 125 extra ids)."""
    from transformers import ByT5Tokenizer

    tokenizer = ByT5Tokenizer()
    # Engines pad on the left for batched decoding; ByT5 pads on the right by default.
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_llama(seed: int = 0, hidden_size: int = 32, num_layers: int = 2, vocab_size: int = 384):
    """A randomly initialised Llama (GQA, 2 layers) small enough for unit tests."""
    import torch
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


def save_tiny_base_model(out_dir: str | Path, *, seed: int = 0, hidden_size: int = 32, num_layers: int = 2) -> Path:
    """Save `tiny_llama` and `tiny_tokenizer` as one HF folder that lerpray.model.base.load_base_model(path) loads.

    The --tiny quickstart and the training tests use it as the base model: Ray Train workers load the model by path
    in their own processes.
    """
    out_dir = Path(out_dir)
    tiny_llama(seed=seed, hidden_size=hidden_size, num_layers=num_layers).save_pretrained(str(out_dir))
    tiny_tokenizer().save_pretrained(str(out_dir))
    return out_dir


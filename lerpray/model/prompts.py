"""A request's prompt as token ids: raw text, or chat messages through the tokenizer's chat template."""

from __future__ import annotations

from lerpray.model.requests import EngineError, GenerationRequest

__all__ = ["encode_prompt", "eos_ids"]


def encode_prompt(tokenizer, request: GenerationRequest, eos: frozenset[int]) -> list[int]:
    """Prompt token ids of `request`; EngineError when it has no prompt, both forms, or nothing left to run."""
    if (request.prompt is None) == (request.messages is None):
        raise EngineError("give exactly one of `prompt` (raw text) or `messages` (chat)")
    if request.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise EngineError("this tokenizer has no chat template; send a raw `prompt` instead of `messages`")
        text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
        plain = tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
        # Some tokenizers (T5/ByT5) append EOS; a prompt that ends the document would stop the model at once.
        if ids and ids[-1] in eos and (not plain or plain[-1] != ids[-1]):
            ids = ids[:-1]
    if not ids:
        raise EngineError("the prompt is empty after tokenisation; send at least one token of text")
    return list(ids)


def eos_ids(model, tokenizer) -> frozenset[int]:
    """Every id that ends a reply: the tokenizer's EOS and the model's generation config's."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if source is not None:
            ids.update(source if isinstance(source, list | tuple) else [source])
    return frozenset(ids)

"""Continuous-batching generation engine over an interpolated model: any mix in any row of one forward pass.

One engine step runs one decode forward for every active row, then admits waiting requests: they are prefilled
together (left padded, per-row position ids) and their KV caches are merged into the running batch by padding the
shorter cache on the left, with the attention mask hiding the padding. Finished rows leave the batch at once and
all-padding columns on the left are trimmed. Each row carries its own coefficient row, sampling parameters and
random generator, so a row's output does not depend on its batch companions (up to float rounding of batched
matmuls). `generate()` and `stream()` are thin loops over the step API that serving drives directly.

Needs a model whose cache is a `DynamicCache` of full-attention `DynamicLayer`s (Llama, Qwen2, Mistral without
sliding window, GPT-2, ...); others are refused on the first prefill.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lerpray.model.requests import (
    EngineError,
    GenerationRequest,
    GenerationResult,
    PromptTooLongError,
    TokenEvent,
)
from lerpray.model.sampling import SamplingParams, TextStream, make_generator, sample_next

__all__ = [
    "Engine",
    "EngineError",
    "GenerationRequest",
    "GenerationResult",
    "PromptTooLongError",
    "SamplingParams",
    "TokenEvent",
]


@dataclass
class _Row:
    request: GenerationRequest
    prompt_ids: list[int]
    coeffs: torch.Tensor  # [K]
    generator: torch.Generator | None
    stream: TextStream
    last_token: int = -1
    generated: int = 0
    finished: bool = False


class Engine:
    """Batches requests with different mixes into shared forward passes. Not thread-safe: drive it from one thread.

    Args:
        imodel: an InterpolatedModel (`.model`, `.layout`, `.set_coeffs(coeffs [N, K])`, `.merged(coeffs [K])`).
        tokenizer: the base model's tokenizer.
        max_batch_size: most rows per forward pass; further requests wait for a free row.
        merged_fast_path: when every row of a forward pass shares one mix, run it on merged weights.
        device: where inputs go; default the model's device.
        context_length: longest prompt + max_tokens; default the model's max_position_embeddings.
    """

    def __init__(
        self,
        imodel,
        tokenizer,
        *,
        max_batch_size: int = 32,
        merged_fast_path: bool = False,
        device: torch.device | str | None = None,
        context_length: int | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise EngineError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.imodel, self.model, self.tokenizer = imodel, imodel.model, tokenizer
        self.layout = imodel.layout
        self.max_batch_size, self.merged_fast_path = max_batch_size, merged_fast_path
        self.device = torch.device(device) if device is not None else next(self.model.parameters()).device
        self.context_length = context_length or int(self.model.config.max_position_embeddings)
        self._eos = _eos_ids(self.model, tokenizer)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._waiting: deque[_Row] = deque()
        self._rows: list[_Row] = []
        self._cache = None  # DynamicCache of the running rows, keys/values [N, H, T, D]
        self._mask: torch.Tensor | None = None  # [N, T] 1 = real token in the cache

    @classmethod
    def from_uri(cls, anchors_uri: str, base_model: str | None = None, *, dtype=torch.float32, **kw) -> Engine:
        """Load an anchor set, the base model its manifest names (unless overridden), and interpolate."""
        from lerpray.anchors import load_anchor_set
        from lerpray.model.base import check_compatible, load_base_model
        from lerpray.model.interpolated import interpolate

        anchor_set = load_anchor_set(anchors_uri)
        device = kw.get("device") or "cpu"
        model, tokenizer = load_base_model(base_model or anchor_set.manifest.base_model.name, dtype=dtype, device=device)
        check_compatible(anchor_set.manifest, model)
        return cls(interpolate(model, anchor_set), tokenizer, **kw)

    # ---- step API -------------------------------------------------------------------------------------------

    def add(self, request: GenerationRequest) -> None:
        """Queue a request; it joins the running batch at the next step. Raises EngineError on a bad request."""
        if any(r.request.request_id == request.request_id for r in (*self._rows, *self._waiting)):
            raise EngineError(f"request_id {request.request_id!r} is already in the engine; use a unique id")
        coeffs = self._check_coeffs(request.coeffs)
        prompt_ids = self.encode(request)
        limit = self.context_length - request.sampling.max_tokens
        if len(prompt_ids) > limit:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_ids)} tokens but at most {limit} fit: context length "
                f"{self.context_length} minus max_tokens {request.sampling.max_tokens}; shorten the prompt or "
                "lower max_tokens"
            )
        generator = make_generator(request.sampling.seed)
        stream = TextStream(self.tokenizer, prompt_ids, request.sampling.stop)
        self._waiting.append(_Row(request, prompt_ids, coeffs, generator, stream))

    def has_work(self) -> bool:
        return bool(self._rows or self._waiting)

    def abort(self, request_id: str) -> bool:
        """Drop a waiting or running request (e.g. its client went away). Returns whether it was found."""
        for row in self._waiting:
            if row.request.request_id == request_id:
                self._waiting.remove(row)
                return True
        for row in self._rows:
            if row.request.request_id == request_id:
                row.finished = True
                self._drop_finished()
                return True
        return False

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """One decode step for every running row, then prefill and merge waiting requests (one token each)."""
        events = self._decode() if self._rows else []
        free = self.max_batch_size - len(self._rows)
        if self._waiting and free > 0:
            events += self._prefill([self._waiting.popleft() for _ in range(min(free, len(self._waiting)))])
        return events

    # ---- offline loops over the step API --------------------------------------------------------------------

    def stream(self, requests: list[GenerationRequest]) -> Iterator[TokenEvent]:
        """Token events of these requests, interleaved, in generation order. Needs an idle engine.

        Bad requests raise here, before any is queued; stopping the iteration early aborts the rest.
        """
        if self.has_work():
            raise EngineError("the engine is already running requests; use add()/step() to share it")
        try:
            for request in requests:
                self.add(request)
        except Exception:  # queue all or none
            self._waiting.clear()
            raise
        return self._drain()

    def _drain(self) -> Iterator[TokenEvent]:
        try:
            while self.has_work():
                yield from self.step()
        finally:  # the consumer stopped early: do not leave its requests in the engine
            for row in [*self._rows, *self._waiting]:
                self.abort(row.request.request_id)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run requests to completion; results in the order of `requests`."""
        texts: dict[str, list[str]] = {r.request_id: [] for r in requests}
        results: dict[str, GenerationResult] = {}
        for event in self.stream(requests):
            texts[event.request_id].append(event.text)
            if event.finish_reason is not None:
                results[event.request_id] = GenerationResult(
                    event.request_id,
                    "".join(texts[event.request_id]),
                    event.prompt_tokens,
                    event.completion_tokens,
                    event.finish_reason,
                )
        return [results[r.request_id] for r in requests]

    def encode(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids: raw text, or chat messages through the tokenizer's chat template."""
        if (request.prompt is None) == (request.messages is None):
            raise EngineError("give exactly one of `prompt` (raw text) or `messages` (chat)")
        if request.messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise EngineError("this tokenizer has no chat template; send a raw `prompt` instead of `messages`")
            text = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
            plain = self.tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
            # Some tokenizers (T5/ByT5) append EOS; a prompt that ends the document would stop the model at once.
            if ids and ids[-1] in self._eos and (not plain or plain[-1] != ids[-1]):
                ids = ids[:-1]
        if not ids:
            raise EngineError("the prompt is empty after tokenisation; send at least one token of text")
        return list(ids)

    # ---- batch mechanics ------------------------------------------------------------------------------------

    def _check_coeffs(self, coeffs) -> torch.Tensor:
        values = torch.tensor(list(coeffs), dtype=torch.float32)  # [K]
        expected = len(self.layout.anchors)
        if values.shape != (expected,):
            raise EngineError(f"coeffs has {values.numel()} values but the anchor set has {expected} anchors")
        if not torch.isfinite(values).all():
            raise EngineError(f"coeffs must be finite numbers, got {list(coeffs)}")
        return values.to(self.device)

    def _decode(self) -> list[TokenEvent]:
        n = len(self._rows)
        ids = torch.tensor([[r.last_token] for r in self._rows], device=self.device)  # [N, 1]
        positions = torch.tensor([[len(r.prompt_ids) + r.generated - 1] for r in self._rows], device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones(n, 1)], dim=1)  # [N, T + 1]
        logits, self._cache = self._forward(self._rows, ids, positions, self._cache)
        events = self._advance(self._rows, logits)
        self._drop_finished()
        return events

    def _prefill(self, rows: list[_Row]) -> list[TokenEvent]:
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)  # [M, L] left padded
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # [M, L]
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [M, L] real tokens count from 0 in every row
        logits, cache = self._forward(rows, ids, positions, None, mask)
        _check_cache(cache)
        events = self._advance(rows, logits)
        self._merge(rows, cache, mask)
        self._drop_finished()
        return events

    def _forward(self, rows, ids, positions, cache, mask=None):
        """One forward pass; returns (last-position logits [N, V], cache)."""
        coeffs = torch.stack([r.coeffs for r in rows])  # [N, K]
        self.imodel.set_coeffs(coeffs)
        shared = self.merged_fast_path and bool((coeffs == coeffs[0]).all())
        with self.imodel.merged(coeffs[0]) if shared else nullcontext():
            out = self.model(
                input_ids=ids,
                attention_mask=self._mask if mask is None else mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_kw: cache},
                **self._keep_last,
            )
        cache = out["cache"] if "cache" in out.keys() else out["past_key_values"]
        return out.logits[:, -1, :], cache

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> list[TokenEvent]:
        """Sample each row's next token, update its text and finish state. logits [N, V]."""
        tokens = sample_next(logits, [r.request.sampling for r in rows], [r.generator for r in rows]).tolist()
        return [self._emit(row, token) for row, token in zip(rows, tokens, strict=True)]

    def _emit(self, row: _Row, token: int) -> TokenEvent:
        row.last_token, row.generated = token, row.generated + 1
        text, stopped = row.stream.flush() if token in self._eos else row.stream.push(token)
        finish = "stop" if stopped or token in self._eos else None
        if finish is None and row.generated >= row.request.sampling.max_tokens:
            tail, stopped = row.stream.flush()
            text, finish = text + tail, "stop" if stopped else "length"
        row.finished = finish is not None
        return TokenEvent(row.request.request_id, token, text, finish, len(row.prompt_ids), row.generated)

    def _merge(self, rows: list[_Row], cache, mask: torch.Tensor) -> None:
        """Append freshly prefilled rows to the running batch, left-padding the shorter KV cache."""
        if not self._rows:
            self._rows, self._cache, self._mask = list(rows), cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        self._mask = torch.cat([_left_pad(self._mask, width, dim=1), _left_pad(mask, width, dim=1)])
        self._rows += rows

    def _drop_finished(self) -> None:
        """Remove finished rows from the batch and trim cache columns that are padding in every remaining row."""
        keep = [i for i, r in enumerate(self._rows) if not r.finished]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep, device=self.device)
        start = int(self._mask.index_select(0, index).any(dim=0).nonzero()[0])  # first column in use
        self._mask = self._mask.index_select(0, index)[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]


def _left_pad(x: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """Zero-pad `x` on the left of `dim` up to `width` (keys/values [N, H, T, D] use dim 2, masks [N, T] dim 1)."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [missing, 0]
    return F.pad(x, pad)


def _check_cache(cache) -> None:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer) is not DynamicLayer for layer in layers):
        raise EngineError(
            f"the engine needs a DynamicCache of full-attention layers, got {type(cache).__name__}; "
            "sliding-window and recurrent models are not supported"
        )


def _eos_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if source is not None:
            ids.update(source if isinstance(source, list | tuple) else [source])
    return frozenset(ids)

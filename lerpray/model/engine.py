"""Continuous-batching generation engine over an interpolated model: any mix in any row of one forward pass.

Each running request owns a slot of a preallocated KV cache (`SlotCache`): its tokens are written in place at
their own positions, so admitting, finishing or aborting a request moves no cached data, and rows of different
lengths cost only what attention must read. A step is:

    admit:    waiting requests take free slots (lowest first)
    decode:   one token for every row that has finished its prompt; the batch is slots [0, hi) with idle slots as
              padding rows, the shape a CUDA graph captures once per batch-size bucket (`cuda_graphs.py`)
    prefill:  at most `prefill_chunk` prompt tokens, shortest remaining prompt first (the oldest row always gets a
              share), so a long prompt is spread over steps and never stalls the decoding rows' streams

Each row carries its own coefficient row (the slot's row of a [slots, K] buffer), sampling parameters and random
generator, so its output does not depend on its batch companions (up to float rounding of batched matmuls).
`generate()` and `stream()` are thin loops over the step API that serving drives directly.

Needs a full-attention model that writes its cache through `Cache.update` (Llama, Qwen2, Mistral without sliding
window, GPT-2, ...); sliding-window and recurrent models are refused with an EngineError.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from lerpray.model.cuda_graphs import DecodeGraphs
from lerpray.model.kv_cache import SlotCache
from lerpray.model.requests import EngineError, GenerationRequest, GenerationResult, PromptTooLongError, TokenEvent
from lerpray.model.sampling import TextStream, make_generator, sample_next
from lerpray.model.step_inputs import chunk_inputs, visibility_mask

__all__ = ["Engine"]


@dataclass
class _Row:
    request: GenerationRequest
    prompt_ids: list[int]
    coeffs: torch.Tensor  # [K]
    generator: torch.Generator | None
    stream: TextStream
    slot: int = -1
    prefilled: int = 0  # prompt tokens already in the cache
    admitted: int = 0  # admission order: the oldest prefilling row always makes progress
    last_token: int = -1
    generated: int = 0
    finished: bool = False

    @property
    def decoding(self) -> bool:
        return self.prefilled == len(self.prompt_ids)

    @property
    def remaining(self) -> int:
        return len(self.prompt_ids) - self.prefilled

    @property
    def next_position(self) -> int:
        """Where the row's next cache write goes: its next prompt token, or the token it last sampled."""
        return self.prefilled if not self.decoding else len(self.prompt_ids) + self.generated - 1


class Engine:
    """Batches requests with different mixes into shared forward passes. Not thread-safe: drive it from one thread.

    Args:
        imodel: an InterpolatedModel (`.model`, `.layout`, `.set_coeffs(coeffs [N, K])`, `.merged(coeffs [K])`).
        tokenizer: the base model's tokenizer.
        max_batch_size: KV-cache slots, i.e. the most requests running at once; further requests wait.
        merged_fast_path: when every row of a forward pass shares one mix, run it on merged weights.
        device: where inputs go; default the model's device.
        context_length: longest prompt + max_tokens; default the model's max_position_embeddings.
        prefill_chunk: most prompt tokens prefilled per step (default 64 on CPU, 512 on GPU): smaller keeps the
            running rows' inter-token latency flat while a long prompt arrives, larger reaches first tokens sooner.
        cuda_graphs: capture the decode step as CUDA graphs (default: on when the model is on a CUDA device).
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
        prefill_chunk: int | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise EngineError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.imodel, self.model, self.tokenizer = imodel, imodel.model, tokenizer
        self.layout = imodel.layout
        self.max_batch_size, self.merged_fast_path = max_batch_size, merged_fast_path
        self.device = torch.device(device) if device is not None else next(self.model.parameters()).device
        self.context_length = context_length or int(self.model.config.max_position_embeddings)
        on_gpu = self.device.type == "cuda"
        self.prefill_chunk = prefill_chunk or (512 if on_gpu else 64)
        if self.prefill_chunk < 1:
            raise EngineError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")
        _check_attention(self.model.config)
        self._eos = _eos_ids(self.model, tokenizer)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keeps_logits = "logits_to_keep" in params
        self._layers = int(self.model.config.num_hidden_layers)
        self._cache = SlotCache(self._layers, max_batch_size, capacity=256,
                                max_capacity=self.context_length + self.prefill_chunk)
        self._slots: list[_Row | None] = [None] * max_batch_size
        self._coeffs = torch.zeros(max_batch_size, len(self.layout.anchors), device=self.device)  # [S, K]
        self._waiting: deque[_Row] = deque()
        self._admissions = 0
        self._dtype = next(self.model.parameters()).dtype
        use_graphs = on_gpu if cuda_graphs is None else cuda_graphs
        self._graphs = DecodeGraphs(self, self._cache, self._coeffs) if use_graphs else None

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
        if any(r.request.request_id == request.request_id for r in (*self._running(), *self._waiting)):
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
        return bool(self._waiting) or any(row is not None for row in self._slots)

    def abort(self, request_id: str) -> bool:
        """Drop a waiting or running request (e.g. its client went away); its slot is free at once."""
        for row in self._waiting:
            if row.request.request_id == request_id:
                self._waiting.remove(row)
                return True
        for row in self._running():
            if row.request.request_id == request_id:
                self._free(row)
                return True
        return False

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """Admit waiting requests, decode one token for every decoding row, prefill the next prompt chunk."""
        self._admit()
        events = self._decode() if any(r.decoding for r in self._running()) else []
        if any(not r.decoding for r in self._running()):
            events += self._prefill()
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
            for row in [*self._running(), *self._waiting]:
                self.abort(row.request.request_id)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run requests to completion; results in the order of `requests`."""
        texts: dict[str, list[str]] = {r.request_id: [] for r in requests}
        results: dict[str, GenerationResult] = {}
        for event in self.stream(requests):
            texts[event.request_id].append(event.text)
            if event.finish_reason is not None:
                results[event.request_id] = GenerationResult(
                    event.request_id, "".join(texts[event.request_id]), event.prompt_tokens,
                    event.completion_tokens, event.finish_reason,
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

    # ---- scheduling -----------------------------------------------------------------------------------------

    def _running(self) -> list[_Row]:
        return [row for row in self._slots if row is not None]

    def _admit(self) -> None:
        for slot, occupant in enumerate(self._slots):
            if not self._waiting:
                return
            if occupant is None:
                row = self._waiting.popleft()
                row.slot, row.admitted, self._slots[slot] = slot, self._admissions, row
                self._admissions += 1
                self._coeffs[slot] = row.coeffs

    def _free(self, row: _Row) -> None:
        row.finished = True
        self._slots[row.slot] = None

    def _chunks(self) -> list[tuple[_Row, int]]:
        """This step's prompt chunks (row, tokens), in slot order: shortest remaining prompt first, so a short
        request's first token never waits for a long prompt; the oldest prefilling row always gets a quarter."""
        pending = sorted((r for r in self._running() if not r.decoding), key=lambda r: r.admitted)
        oldest = pending[0]
        takes = {id(oldest): min(oldest.remaining, max(1, self.prefill_chunk // 4))}
        budget = self.prefill_chunk - takes[id(oldest)]
        for row in sorted(pending, key=lambda r: r.remaining):
            extra = min(row.remaining - takes.get(id(row), 0), budget)
            if extra > 0:
                takes[id(row)] = takes.get(id(row), 0) + extra
                budget -= extra
        return [(row, takes[id(row)]) for row in sorted(pending, key=lambda r: r.slot) if id(row) in takes]

    # ---- forward passes -------------------------------------------------------------------------------------

    def _decode(self) -> list[TokenEvent]:
        rows = [r for r in self._running() if r.decoding]
        hi = 1 + max(r.slot for r in rows)
        positions = [0] * hi  # idle slots write at their own next position (see step_inputs)
        ids = [self._pad_id] * hi
        for r in self._running():
            if r.slot < hi:
                positions[r.slot] = r.next_position
                ids[r.slot] = r.last_token if r.decoding else self._pad_id
        length = 1 + max(r.next_position for r in rows)
        self._cache.reserve(max(positions) + 1)
        shared = self._shared(rows)
        if self._graphs is not None and not shared:
            logits = self._graphs.run(ids, positions, length)
        else:
            ids_t = torch.tensor(ids, device=self.device)[:, None]  # [hi, 1]
            pos_t = torch.tensor(positions, device=self.device)[:, None]  # [hi, 1]
            slots = torch.arange(hi, device=self.device)
            self._cache.plan(slots, pos_t, length, first_slot=0)
            logits = self._forward(ids_t, pos_t, self._coeffs[:hi], rows[0].coeffs if shared else None, length)
        logits = logits[:, -1].index_select(0, torch.tensor([r.slot for r in rows], device=self.device))
        return self._advance(rows, logits)

    def _prefill(self) -> list[TokenEvent]:
        chunks = self._chunks()
        rows = [row for row, _ in chunks]
        ids, positions = chunk_inputs(
            [row.prompt_ids[row.prefilled : row.prefilled + n] for row, n in chunks],
            [row.prefilled for row, _ in chunks], self._pad_id, self.device,
        )
        self._cache.reserve(int(positions.max()) + 1)
        slots = torch.tensor([row.slot for row in rows], device=self.device)
        length = max(row.prefilled + n for row, n in chunks)
        first = rows[0].slot
        contiguous = [row.slot for row in rows] == list(range(first, first + len(rows)))
        self._cache.plan(slots, positions, length, first_slot=first if contiguous else None)
        last = torch.tensor([[n - 1] for _, n in chunks], device=self.device)  # [M, 1] each chunk's last token
        merged = rows[0].coeffs if self._shared(rows) else None
        logits = self._forward(ids, positions, self._coeffs.index_select(0, slots), merged, length, last)
        for row, n in chunks:
            row.prefilled += n
        done = [i for i, row in enumerate(rows) if row.decoding]
        if not done:
            return []
        logits = logits[:, -1].index_select(0, torch.tensor(done, device=self.device))
        return self._advance([rows[i] for i in done], logits)

    def _shared(self, rows: list[_Row]) -> bool:
        """Whether this forward may run on merged weights: the fast path is on and every row has one mix."""
        return self.merged_fast_path and len({tuple(r.request.coeffs) for r in rows}) == 1

    def _forward(self, ids, positions, coeffs, merged, length, keep=None) -> torch.Tensor:
        """One eager forward over planned slots; returns logits [N, 1 or Q, V]."""
        self.imodel.bind_coeffs(coeffs)
        kwargs = {"logits_to_keep": keep if keep is not None else 1} if self._keeps_logits else {}
        with self.imodel.merged(merged) if merged is not None else nullcontext():
            out = self.model(
                input_ids=ids, position_ids=positions, attention_mask=visibility_mask(positions, length, self._dtype),
                use_cache=True, **{self._cache_kw: self._cache}, **kwargs,
            )
        if self._cache.updated != self._layers:
            raise EngineError(
                f"{type(self.model).__name__} wrote {self._cache.updated} of {self._layers} layers through the KV "
                "cache; the engine supports full-attention models only (no recurrent or hybrid layers)"
            )
        if keep is not None and not self._keeps_logits:  # older models return every position
            return torch.take_along_dim(out.logits, keep[..., None], dim=1)
        return out.logits

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
        if finish is not None:
            self._free(row)
        return TokenEvent(row.request.request_id, token, text, finish, len(row.prompt_ids), row.generated)

    def _check_coeffs(self, coeffs) -> torch.Tensor:
        values = torch.tensor(list(coeffs), dtype=torch.float32)  # [K]
        expected = len(self.layout.anchors)
        if values.shape != (expected,):
            raise EngineError(f"coeffs has {values.numel()} values but the anchor set has {expected} anchors")
        if not torch.isfinite(values).all():
            raise EngineError(f"coeffs must be finite numbers, got {list(coeffs)}")
        return values.to(self.device)


def _check_attention(config) -> None:
    """Refuse models whose attention is not full (the slot cache keeps every position of every layer)."""
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    sliding = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    if types != {"full_attention"} or sliding:
        raise EngineError(
            f"the engine needs full attention in every layer, but this {config.model_type} model has "
            f"{'a sliding window' if sliding else 'layer types ' + str(sorted(types))}; sliding-window and "
            "recurrent models are not supported"
        )


def _eos_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if source is not None:
            ids.update(source if isinstance(source, list | tuple) else [source])
    return frozenset(ids)

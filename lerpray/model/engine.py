"""Continuous-batching generation engine over an interpolated model: any mix in any row of one forward pass.

Each running request owns a slot of a preallocated KV cache (`SlotCache`, sized once at start-up from a memory
budget, `kv_budget.py`): its tokens are written in place at their own positions, so admitting, finishing or
aborting a request moves no cached data, and rows of different lengths cost only what attention must read. A step
admits waiting requests (`scheduler.py`), decodes one token for every row past its prompt (slots [0, hi), idle
slots as padding rows that write to the cache's scratch slot), then prefills at most `prefill_chunk` prompt tokens,
so a long prompt is spread over steps and never stalls the decoding rows' streams. Every forward pass is one
function (`forward.py`); the decode step over a whole batch bucket is captured as CUDA graphs on a GPU and can be
run eagerly on the CPU (`decode_mode="bucket"`, `cuda_graphs.py`).

A step syncs with the device once, on its sampled ids; on CUDA the host detokenises step t while the GPU runs
step t + 1 (`emission.py`). Each row has its own mix (its slot's row of `mix_state.MixTable`), sampling parameters and
random generator, so its output does not depend on its batch companions (up to float rounding of batched matmuls).
`generate()` and `stream()` are thin loops over the step API that serving drives directly.

Needs a full-attention model writing its cache through `Cache.update` (Llama, Qwen2, GPT-2, ...); others are refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from lerpray.model.cuda_graphs import DECODE_MODES, DecodeGraphs, choose_decode_mode
from lerpray.model.emission import Emission
from lerpray.model.forward import ModelForward
from lerpray.model.kv_budget import build_cache, check_fits, kv_budget
from lerpray.model.kv_cache import SlotCache, unsupported_attention
from lerpray.model.mix_state import MixTable
from lerpray.model.prompts import encode_prompt, eos_ids
from lerpray.model.requests import EngineError, GenerationRequest, GenerationResult, TokenEvent
from lerpray.model.rows import Row, prompt_token_logprobs
from lerpray.model.scheduler import SlotScheduler
from lerpray.model.step_inputs import chunk_inputs, decode_inputs

__all__ = ["DECODE_MODES", "Engine"]


class Engine:
    """Batches requests with different mixes into shared forward passes. Not thread-safe: drive it from one thread.

    Args:
        imodel: an InterpolatedModel (`.model`, `.layout`, `.bind_coeffs(coeffs [N, K], host)`, `.merged(coeffs [K])`).
        tokenizer: the base model's tokenizer.
        max_batch_size: KV-cache slots, i.e. the most requests running at once; further requests wait.
        merged_fast_path: when every row of a forward pass shares one mix, run it on merged weights.
        device: where inputs go; default the model's device.
        context_length: longest prompt + max_tokens wanted; default the model's max_position_embeddings. Capped by
            what the KV-cache budget fits (`self.context_length` is the cap).
        prefill_chunk: most prompt tokens prefilled per step (default 32 on CPU, 512 on GPU): smaller keeps the
            running rows' inter-token latency flat while a long prompt arrives, larger reaches first tokens sooner.
        decode_mode: "graph" (CUDA graphs of the bucket step; CUDA's default), "bucket" (that step run eagerly over
            the whole bucket, padding rows included: the CPU's test of it) or "eager" (rows [0, hi); CPU's default).
            `cuda_graphs`, the older switch: True is "graph", False "eager".
        kv_cache_bytes, kv_cache_fraction: the KV-cache budget (kv_budget.py): bytes, or the fraction of free
            device memory on CUDA (default 0.8); on the CPU the default is 4 GiB of address space.
        active_capacity: most anchors a pinned graph of the decode step runs (default 8; more: its wide graph).
        overlap_text: detokenise a step's text while the next forward runs (default: on CUDA).
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
        decode_mode: str | None = None,
        cuda_graphs: bool | None = None,
        kv_cache_bytes: int | None = None,
        kv_cache_fraction: float | None = None,
        active_capacity: int | None = None,
        overlap_text: bool | None = None,
    ) -> None:
        self.imodel, self.model, self.tokenizer = imodel, imodel.model, tokenizer
        self.layout = imodel.layout
        self.max_batch_size, self.merged_fast_path = max_batch_size, merged_fast_path
        self.device = torch.device(device) if device is not None else next(self.model.parameters()).device
        on_gpu = self.device.type == "cuda"
        self.prefill_chunk = prefill_chunk or (512 if on_gpu else 32)
        problem = unsupported_attention(self.model.config) or next(
            (f"{name} must be >= 1, got {value}" for name, value in
             (("max_batch_size", max_batch_size), ("prefill_chunk", self.prefill_chunk)) if value < 1), None)
        if problem:
            raise EngineError(problem)
        self.decode_mode = decode_mode = choose_decode_mode(decode_mode, cuda_graphs, self.device)
        self._eos = eos_ids(self.model, tokenizer)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._mixes = MixTable(max_batch_size, len(self.layout.anchors), self.device)  # [S, K] per slot
        self._slot_range = torch.arange(max_batch_size, device=self.device)
        self._scheduler = SlotScheduler(max_batch_size, self.prefill_chunk)
        self._emission = Emission(self._scheduler, self._eos, on_gpu if overlap_text is None else overlap_text)
        positions = self.model.config.max_position_embeddings
        if context_length is not None and not 1 <= context_length <= positions:
            raise EngineError(f"context_length must be between 1 and the model's {positions} positions "
                              f"(max_position_embeddings), got {context_length}; lower it or leave it unset")
        self.model_context = int(context_length or positions)
        with torch.inference_mode():  # the cache and every graph are made now: none inside step()
            self._forward = ModelForward(imodel, SlotCache(0, 0, 1))
            self._cache = build_cache(self._forward, self._mixes.device_rows, max_batch_size, self.model_context,
                                      kv_budget(self.device, kv_cache_bytes, kv_cache_fraction))
            self.context_length = self._cache.capacity
            active = min(active_capacity or 8, len(self.layout.anchors))  # all anchors: nothing to pin
            self._graphs = (DecodeGraphs(self._forward, self._mixes, self._pad_id, capture=decode_mode == "graph",
                                         active_capacity=active if active < len(self.layout.anchors) else None)
                            if decode_mode != "eager" else None)

    @classmethod
    def from_uri(cls, anchors_uri: str, base_model: str | None = None, *, dtype=torch.float32, **kw) -> Engine:
        """Load an anchor set, the base model its manifest names (unless overridden), and interpolate."""
        from lerpray.anchors import load_anchor_set
        from lerpray.model.base import check_model_fits, load_base_model
        from lerpray.model.interpolated import interpolate

        anchor_set = load_anchor_set(anchors_uri)
        device = kw.get("device") or "cpu"
        model, tokenizer = load_base_model(base_model or anchor_set.manifest.base_model.name, dtype=dtype, device=device)
        check_model_fits(anchor_set.manifest, model)
        return cls(interpolate(model, anchor_set), tokenizer, **kw)

    @property
    def kv_cache_nbytes(self) -> int:
        """Bytes of the KV cache allocated at start-up (every slot and the scratch slot)."""
        return self._cache.nbytes

    def close(self) -> None:
        """Free the KV cache and the captured graphs now (dropping the engine does too: nothing refers back to it)."""
        self._graphs = None
        self._forward.cache = self._cache = SlotCache(0, 0, 1)

    # ---- step API -------------------------------------------------------------------------------------------

    def add(self, request: GenerationRequest) -> None:
        """Queue a request; it joins the running batch at the next step. Raises EngineError on a bad request."""
        if request.request_id in {r.request.request_id for r in (*self._scheduler.running(), *self._scheduler.queued())}:
            raise EngineError(f"request_id {request.request_id!r} is already in the engine; use a unique id")
        for coeffs in request.mix.mixes():
            self._check_coeffs(coeffs)
        if not 1 <= request.n <= self.max_batch_size:
            raise EngineError(f"n must be between 1 and {self.max_batch_size} (the engine's slots), got {request.n}")
        prompt_ids = self.encode(request)
        check_fits(len(prompt_ids), request.sampling.max_tokens, self.model_context, self.context_length,
                   self.max_batch_size)
        self._scheduler.enqueue(Row.choices(request, prompt_ids, self.tokenizer))

    def has_work(self) -> bool:
        return self._scheduler.has_work()

    def abort(self, request_id: str) -> bool:
        """Drop a waiting or running request (e.g. its client went away); its slots are free at once."""
        return self._scheduler.abort(request_id)

    @torch.inference_mode()
    def step(self, protect_streams: bool = True) -> list[TokenEvent]:
        """Admit waiting requests, decode a token for each decoding row, prefill prompt chunks (SlotScheduler.chunks)."""
        self._mixes.clear(self._scheduler.released)  # idle slots' stale mixes would keep their anchors active
        self._write_mixes(self._scheduler.admit())
        events = self._decode() if self._scheduler.decoding() else self._emission.release_deferred()
        if self._scheduler.prefilling():
            events += self._prefill(protect_streams)
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
            self._scheduler.clear_queue()
            raise
        return self._drain()

    def _drain(self) -> Iterator[TokenEvent]:
        try:
            while self.has_work():
                yield from self.step(protect_streams=False)  # nobody watches these streams token by token
        finally:  # the consumer stopped early: do not leave its requests in the engine
            for row in [*self._scheduler.running(), *self._scheduler.queued()]:
                self.abort(row.request.request_id)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run requests to completion; one result per choice, in the order of `requests` (then choice index)."""
        texts: dict[tuple[str, int], list[str]] = {}
        results: dict[tuple[str, int], GenerationResult] = {}
        for event in self.stream(requests):
            key = (event.request_id, event.index)
            texts.setdefault(key, []).append(event.text)
            if event.finish_reason is not None:
                results[key] = GenerationResult(event.request_id, "".join(texts[key]), event.prompt_tokens,
                                                event.completion_tokens, event.finish_reason, event.index)
        return [results[(r.request_id, i)] for r in requests for i in range(r.n)]

    def encode(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids: raw text, or chat messages through the tokenizer's chat template."""
        return encode_prompt(self.tokenizer, request, self._eos)

    # ---- forward passes -------------------------------------------------------------------------------------

    def _write_mixes(self, rows: list[Row], scheduled_only: bool = False) -> None:
        """Rows' slots get the coefficients of the token they produce next (a schedule's change between steps)."""
        for row in rows:
            if not scheduled_only or row.request.mix.scheduled:
                self._mixes.write(row.slot, row.mix())

    def _decode(self) -> list[TokenEvent]:
        rows = self._scheduler.decoding()
        self._write_mixes(rows, scheduled_only=True)
        hi = 1 + max(r.slot for r in rows)
        needed = 1 + max(r.next_position for r in rows)  # entries the rows' queries must see
        shared = self._shared(rows)
        graphs = self._graphs if not shared else None  # merged weights are not what the graphs captured
        width = graphs.bucket(hi) if graphs is not None else hi
        inputs = decode_inputs([(r.slot, r.last_token, r.next_position) for r in rows], width, self._pad_id,
                               self._cache.scratch)
        if graphs is not None:
            logits = graphs.run(*inputs, needed)
        else:
            ids, positions, writes = torch.tensor(inputs, device=self.device)[..., None]  # [hi, 1] each
            self._cache.plan(self._slot_range[:hi], positions, needed, first_slot=0, write_slots=writes)
            logits = self._forward(ids, positions, self._mixes.upload()[:hi], needed, last_only=True,
                                   merged=rows[0].mix() if shared else None,  # host values: no device sync
                                   host_coeffs=self._mixes.host[:hi])
        events = self._emission.release_deferred()  # the last step's text, while this forward runs on a GPU
        rows = [r for r in rows if not r.finished]  # a stop string found just now ended the row: drop its token
        if not rows:
            return events
        logits = logits[:, -1].index_select(0, torch.tensor([r.slot for r in rows], device=self.device))
        return events + self._emission.advance(rows, logits)

    def _prefill(self, protect_streams: bool) -> list[TokenEvent]:
        chunks = self._scheduler.chunks(protect_streams)
        rows = [row for row, _ in chunks]
        self._write_mixes(rows, scheduled_only=True)
        ids, positions, writes = chunk_inputs(
            [row.prompt_ids[row.prefilled : row.prefilled + n] for row, n in chunks],
            [row.prefilled for row in rows], [row.slot for row in rows], self._pad_id, self._cache.scratch,
            self.device,
        )
        host_slots = torch.tensor([row.slot for row in rows])
        slots = host_slots.to(self.device)
        length = max(row.prefilled + n for row, n in chunks)  # real tokens only: padding writes to the scratch slot
        first = rows[0].slot
        contiguous = [row.slot for row in rows] == list(range(first, first + len(rows)))
        self._cache.plan(slots, positions, length, first_slot=first if contiguous else None, write_slots=writes)
        every = any(row.prompt_logprobs is not None for row in rows)  # scoring the prompt needs every position
        merged = rows[0].mix() if self._shared(rows) else None
        coeffs, host = self._mixes.upload().index_select(0, slots), self._mixes.host.index_select(0, host_slots)
        logits = self._forward(ids, positions, coeffs, length, last_only=not every, merged=merged,
                               host_coeffs=host)  # [M, 1 or Q, V]; chunks are left-padded: each ends in the last column
        for m, (row, n) in enumerate(chunks):
            if row.prompt_logprobs is not None:
                targets = row.prompt_ids[row.prefilled + 1 : row.prefilled + n + 1]
                row.prompt_logprobs += prompt_token_logprobs(logits[m, -n:], targets, row.sampling.prompt_logprobs)
            row.prefilled += n
        done = [m for m, row in enumerate(rows) if row.decoding]
        if not done:
            return []
        return self._start_choices([rows[m] for m in done], logits[done, -1])

    def _start_choices(self, parents: list[Row], logits: torch.Tensor) -> list[TokenEvent]:
        """Prompts just finished: their other choices copy the prompt's cache, then every choice samples its first
        token from the same logits (or, with max_tokens 0, the request ends with its prompt's scores)."""
        rows, index = [], []
        for m, parent in enumerate(parents):
            children = [r for r in self._scheduler.running() if r.parent is parent]
            self._cache.copy_prefix(parent.slot, [c.slot for c in children], len(parent.prompt_ids))
            for row in (parent, *children):
                row.prefilled, row.parent = len(row.prompt_ids), None
                rows.append(row)
                index.append(m)
        scored = [r for r in rows if r.sampling.max_tokens == 0]
        events = [r.score_only() for r in scored]
        for row in scored:
            self._scheduler.free(row)
        keep = [i for i, r in enumerate(rows) if r.sampling.max_tokens > 0]
        if keep:
            events += self._emission.advance([rows[i] for i in keep], logits[torch.tensor([index[i] for i in keep])])
        return events

    def _shared(self, rows: list[Row]) -> bool:
        """Whether this forward may run on merged weights: the fast path is on and every row has one mix."""
        return self.merged_fast_path and len({r.mix() for r in rows}) == 1

    def _check_coeffs(self, coeffs) -> None:
        if len(coeffs) != len(self.layout.anchors) or not all(math.isfinite(c) for c in coeffs):
            raise EngineError(f"coeffs must hold a finite number for each of the set's {len(self.layout.anchors)} anchors; "
                              f"got {list(coeffs)}")

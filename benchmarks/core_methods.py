"""The methods the core benchmark compares; all but the engine share one decode loop.

`greedy_decode` is the loop: one prefill forward over the whole prompt, then one forward per new token with the KV
cache, greedy argmax, no EOS stop (every row makes exactly `new_tokens` tokens), logits of the last position only.
Only the LoRA handling differs between methods:

    base              the plain model, all requests in one batch (no LoRA at all)
    lerpray           lerpray's stacked layers, all requests in one batch, one mix per row (set_coeffs [N, K])
    lerpray_engine    the same through lerpray.model.Engine (continuous batching, sampling, detokenisation)
    merge_per_mix     per mix: W = W0 + sum_k c_k s_k B_k A_k (lerpray's merged()), then decode its request alone
    paper_per_mix     per mix: all K PEFT adapters active, lora_A of adapter k scaled by c_k (the paper's code),
                      then decode its request alone
    peft_cat_per_mix  per mix: PEFT add_weighted_adapter(combination_type="cat"), activate, decode its request
                      alone, delete the adapter

Each run returns its wall time (setup of every mix included) and the generated tokens [N, new_tokens].
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from _common import sync
from core_workload import Workload

BATCHED = ("base", "lerpray", "lerpray_engine")
PER_MIX = ("merge_per_mix", "paper_per_mix", "peft_cat_per_mix")
METHODS = BATCHED + PER_MIX
_CAT_ADAPTER = "bench_cat_mix"


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # CPU time of this process over the same span: steadier than wall time on a loaded, shared CPU
    ttft_s: float  # batched: until every row has its first token; per mix: median over mixes (setup included)
    tokens: torch.Tensor  # [N, new_tokens] long on CPU; -1 after a row stopped early (engine only)

    @property
    def generated(self) -> int:
        return int((self.tokens >= 0).sum())


@torch.inference_mode()
def greedy_decode(model, ids: torch.Tensor, new_tokens: int, cache_kw: str) -> tuple[torch.Tensor, float]:
    """ids [N, P] -> (tokens [N, new_tokens] on the model's device, seconds to the first token)."""
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(dim=-1, keepdim=True)  # [N, 1]
    sync(ids.device)
    ttft = time.perf_counter() - start
    tokens = [token]
    for _ in range(new_tokens - 1):
        cache = out["cache"] if "cache" in out.keys() else out["past_key_values"]
        out = model(input_ids=token, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        tokens.append(token)
    return torch.cat(tokens, dim=1), ttft  # [N, new_tokens]


def run(method: str, w: Workload, n: int, new_tokens: int) -> Run:
    """Run `method` on the first `n` requests (one mix each) of the workload."""
    if method == "base":
        return _batched(w, w.base, n, new_tokens)
    if method == "lerpray":
        return _batched(w, w.imodel.model, n, new_tokens, setup=lambda: w.imodel.set_coeffs(w.coeffs[:n]))
    if method == "lerpray_engine":
        return _engine(w, n, new_tokens)
    per_mix = {"merge_per_mix": _Merged, "paper_per_mix": _Paper, "peft_cat_per_mix": _Cat}
    if method not in per_mix:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    strategy = per_mix[method](w)  # untimed: bookkeeping that a server would do once at start-up
    strategy.begin()
    try:
        return _per_mix(w, n, new_tokens, strategy)
    finally:
        strategy.end()


def _batched(w: Workload, model, n: int, new_tokens: int, setup=None) -> Run:
    sync(w.device)
    start, cpu = time.perf_counter(), time.process_time()
    if setup is not None:
        setup()
    setup_s = time.perf_counter() - start
    tokens, prefill = greedy_decode(model, w.ids[:n], new_tokens, w.cache_kw)
    sync(w.device)
    return Run(time.perf_counter() - start, time.process_time() - cpu, setup_s + prefill, tokens.cpu())


def _engine(w: Workload, n: int, new_tokens: int) -> Run:
    from lerpray.model import Engine, GenerationRequest
    from lerpray.model.sampling import SamplingParams

    engine = Engine(w.imodel, w.tokenizer, max_batch_size=n)
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens)
    requests = [GenerationRequest(coeffs=tuple(w.coeffs[i].tolist()), prompt=w.prompts[i], sampling=params,
                                  request_id=str(i)) for i in range(n)]
    tokens = torch.full((n, new_tokens), -1, dtype=torch.long)  # [N, new_tokens]
    sync(w.device)
    start, cpu = time.perf_counter(), time.process_time()
    ttft = float("nan")
    for event in engine.stream(requests):
        row = int(event.request_id)
        tokens[row, event.completion_tokens - 1] = event.token_id
        if event.completion_tokens == 1 and row == n - 1:  # the prefill step emits every row's first token
            ttft = time.perf_counter() - start
    sync(w.device)
    return Run(time.perf_counter() - start, time.process_time() - cpu, ttft, tokens)


def _per_mix(w: Workload, n: int, new_tokens: int, strategy) -> Run:
    """Each request alone, after `strategy.prepare(mix)` readied a model for its mix; TTFT = prepare + prefill."""
    rows, ttfts = [], []
    sync(w.device)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        model = strategy.prepare(w.coeffs[i])
        sync(w.device)
        setup_s = time.perf_counter() - t0
        try:
            tokens, prefill = greedy_decode(model, w.ids[i : i + 1], new_tokens, w.cache_kw)
        finally:
            strategy.release()
        rows.append(tokens)
        ttfts.append(setup_s + prefill)
    sync(w.device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Run(wall, cpu, float(torch.tensor(ttfts).median()), torch.cat(rows).cpu())


class _Merged:
    """Merging per mix: lerpray's merged() writes W0 + delta for every adapted layer (no cache: built with 0)."""

    def __init__(self, w: Workload) -> None:
        self.w, self.ctx = w, None

    def begin(self) -> None:
        pass

    def prepare(self, mix: torch.Tensor):
        self.ctx = self.w.imodel.merged(mix)  # [K]
        self.ctx.__enter__()
        return self.w.imodel.model

    def release(self) -> None:
        self.ctx.__exit__(None, None, None)

    def end(self) -> None:
        pass


class _Paper:
    """The paper's method: all K adapters active in PEFT; the mix is folded into lora_A (A_k <- c_k A_k)."""

    def __init__(self, w: Workload) -> None:
        self.w = w
        self.slots = [  # (lora_A weight of adapter k in one layer, its original value, k)
            (module.lora_A[name].weight, module.lora_A[name].weight.detach().clone(), k)
            for module in w.peft.modules() if hasattr(module, "lora_A")
            for k, name in enumerate(w.peft_names) if name in module.lora_A
        ]

    def begin(self) -> None:
        self.w.peft.base_model.set_adapter(list(self.w.peft_names))

    @torch.no_grad()
    def prepare(self, mix: torch.Tensor):
        values = mix.tolist()
        for weight, original, k in self.slots:
            torch.mul(original, values[k], out=weight)
        return self.w.peft

    def release(self) -> None:
        pass

    @torch.no_grad()
    def end(self) -> None:
        for weight, original, _ in self.slots:
            weight.copy_(original)
        self.w.peft.set_adapter(self.w.peft_names[0])


class _Cat:
    """PEFT add_weighted_adapter(combination_type="cat") per mix: build, activate, decode, delete."""

    def __init__(self, w: Workload) -> None:
        self.w = w

    def begin(self) -> None:
        pass

    def prepare(self, mix: torch.Tensor):
        peft = self.w.peft
        peft.base_model.add_weighted_adapter(list(self.w.peft_names), mix.tolist(), _CAT_ADAPTER,
                                             combination_type="cat")
        peft.set_adapter(_CAT_ADAPTER)
        return peft

    def release(self) -> None:
        with warnings.catch_warnings():  # "Adapter ... was active which is now deleted": intended
            warnings.simplefilter("ignore", UserWarning)
            self.w.peft.delete_adapter(_CAT_ADAPTER)

    def end(self) -> None:
        self.w.peft.set_adapter(self.w.peft_names[0])

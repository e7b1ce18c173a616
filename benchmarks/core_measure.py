"""Latency and memory measurements of the core benchmark: first token of a new vs a seen mix, memory over many
distinct mixes, and an optional torch.profiler breakdown of one decode.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch
from _common import median, rss_bytes, sync
from core_methods import greedy_decode
from core_workload import Workload, random_mixes


def _requests(mixes: torch.Tensor, prompts: list[str], max_tokens: int):
    from lerpray.model import GenerationRequest
    from lerpray.model.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    return [GenerationRequest(coeffs=tuple(m.tolist()), prompt=prompts[i % len(prompts)], sampling=params)
            for i, m in enumerate(mixes)]


def _first_token_s(engine, request, device) -> tuple[float, float]:
    """(wall, CPU) seconds from handing the engine one request (max_tokens=1) to its first token."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    engine.add(request)
    events = engine.step()  # the prefill step: validation, tokenisation, set_coeffs, forward, sampling
    sync(device)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if len(events) != 1 or engine.has_work():
        raise RuntimeError(f"expected the request to finish in one step, got {len(events)} events")
    return elapsed, cpu


def measure_ttft(w: Workload, trials: int, seed: int) -> dict:
    """Time to first token (batch of one request, engine) for never-seen mixes vs one repeated mix, in pairs.

    Also the merged fast path (merged_fast_path=True): a never-seen mix there pays one merge of every adapted layer
    (the workload's model has no merge cache, so every call merges: this is the fast path's cache-miss cost).
    """
    from lerpray.model.engine import Engine

    new = random_mixes(2 * trials, w.coeffs.shape[1], seed + 7919)  # [2T, K] never used elsewhere
    seen = w.coeffs[:1]  # [1, K] the workload's first mix, used by every method already
    engine = Engine(w.imodel, w.tokenizer, max_batch_size=1)
    fast = Engine(w.imodel, w.tokenizer, max_batch_size=1, merged_fast_path=True)
    prompt = w.prompts[:1]
    for _ in range(2):  # warm-up
        _first_token_s(engine, _requests(seen, prompt, 1)[0], w.device)
    new_s, seen_s, fast_s = [], [], []
    for i in range(trials):  # pairs in alternating order, so neither side always runs second
        new_request, seen_request = _requests(new[i : i + 1], prompt, 1)[0], _requests(seen, prompt, 1)[0]
        if i % 2:
            seen_s.append(_first_token_s(engine, seen_request, w.device))
            new_s.append(_first_token_s(engine, new_request, w.device))
        else:
            new_s.append(_first_token_s(engine, new_request, w.device))
            seen_s.append(_first_token_s(engine, seen_request, w.device))
    for i in range(trials):  # separately: a merge touches every weight and would disturb the pairs' caches
        fast_s.append(_first_token_s(fast, _requests(new[trials + i : trials + i + 1], prompt, 1)[0], w.device))

    def ms(pairs, i):
        return round(1e3 * median([p[i] for p in pairs]), 3)

    return {
        "trials": trials,
        "prompt_tokens": int(w.ids.shape[1]),
        "new_mix_ms": ms(new_s, 0),
        "seen_mix_ms": ms(seen_s, 0),
        # the median of paired differences: robust to load shifts during the trials (both sides of a pair see one)
        "new_minus_seen_ms": round(1e3 * median([a[0] - b[0] for a, b in zip(new_s, seen_s, strict=True)]), 3),
        "new_mix_cpu_ms": ms(new_s, 1),
        "seen_mix_cpu_ms": ms(seen_s, 1),
        "new_minus_seen_cpu_ms": round(1e3 * median([a[1] - b[1] for a, b in zip(new_s, seen_s, strict=True)]), 3),
        "merged_fast_path_new_mix_ms": ms(fast_s, 0),
        "merged_fast_path_new_mix_cpu_ms": ms(fast_s, 1),
        "all_new_ms": [round(1e3 * p[0], 3) for p in new_s],
        "all_seen_ms": [round(1e3 * p[0], 3) for p in seen_s],
    }


def measure_memory(imodel, tokenizer, prompts: list[str], *, mixes: int, batch: int, new_tokens: int,
                   device: torch.device, seed: int) -> dict:
    """Process RSS (and CUDA memory) before/after serving `mixes` distinct mixes through the engine in batches."""
    from lerpray.model.engine import Engine

    engine = Engine(imodel, tokenizer, max_batch_size=batch)
    num_anchors = len(imodel.layout.anchors)
    for _ in range(2):  # warm-up: allocator pools and caches reach their steady state
        engine.generate(_requests(random_mixes(batch, num_anchors, seed + 1), prompts, new_tokens))
    gc.collect()
    before, cuda_before = rss_bytes(), _cuda_allocated(device)
    trace = []
    distinct = random_mixes(mixes, num_anchors, seed + 2)  # [M, K]
    for start in range(0, mixes, batch):
        engine.generate(_requests(distinct[start : start + batch], prompts, new_tokens))
        trace.append(round(rss_bytes() / 2**20, 1))
    gc.collect()
    after, cuda_after = rss_bytes(), _cuda_allocated(device)
    result = {
        "distinct_mixes": mixes, "batch": batch, "new_tokens": new_tokens,
        "prompt_tokens": len(tokenizer(prompts[0], add_special_tokens=True)["input_ids"]),
        "rss_before_mib": round(before / 2**20, 1), "rss_after_mib": round(after / 2**20, 1),
        "rss_growth_pct": round(100.0 * (after - before) / before, 3),
        "rss_trace_mib": trace,
    }
    if cuda_before is not None:
        result.update(cuda_allocated_before_mib=round(cuda_before / 2**20, 1),
                      cuda_allocated_after_mib=round(cuda_after / 2**20, 1))
    return result


def _cuda_allocated(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def profile_decode(w: Workload, n: int, new_tokens: int, out: Path) -> Path:
    """torch.profiler op tables (self time) of one base and one lerpray decode at batch n, written to `out`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if w.device.type == "cuda" else [])
    sort = "self_device_time_total" if w.device.type == "cuda" else "self_cpu_time_total"
    sections = []
    w.imodel.set_coeffs(w.coeffs[:n])
    for name, model in (("base", w.base), ("lerpray", w.imodel.model)):
        with profile(activities=activities, record_shapes=True) as prof:
            greedy_decode(model, w.ids[:n], new_tokens, w.cache_kw)
            sync(w.device)
        table = prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=30)
        sections.append(f"=== {name}, batch {n}, {new_tokens} new tokens ===\n{table}\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(sections))
    return out

"""Engine benchmark: lerpray's engine against the same engine without anchors and HF generate.

    .venv/bin/python benchmarks/bench_engine.py                  # CPU: SmolLM2-135M fp32 -> results/engine_cpu.json
    .venv/bin/python benchmarks/bench_engine.py --quick          # CPU smoke on a tiny random Llama (seconds)
    PYTHONPATH=. python3 benchmarks/bench_engine.py --gpu        # CUDA: ~1B and 8B Llama shapes, bf16 -> --out FILE
    PYTHONPATH=. python3 benchmarks/bench_engine.py --cpu-rehearsal   # the --gpu run's code and phases, tiny, CPU

Workload: K = 10 random non-zero LoRA anchors, r = 32, lora_alpha = 16 on q, k, v, o (core_workload.py), greedy,
EOS ignored so every row runs to the end. Needs no network and no git: it runs from a plain copy of the tree.

    throughput   tokens/s of N requests x `new` tokens through `Engine.generate`, the ladder of the multi-LoRA
                 reports: base (the same engine over the plain model), anchors_unused (every coefficient 0),
                 one_anchor (every row anchor 0 alone), lerpray (every row its own mix); on GPU also HF generate
    prefill_itl  15 requests decoding; one long prompt arrives; the 15 rows' inter-token latency during its prefill
                 (p99) against their median: chunked prefill keeps the streams flowing
    decode_step  (GPU, rehearsed on CPU) one decode step vs the time to read the weights once at the measured copy
                 bandwidth; graph captures (all made at start-up) before/after requests with never-seen mixes

On CUDA the engine decodes through CUDA graphs; the rehearsal runs the same bucket function eagerly
(decode_mode="bucket"). Each engine is closed before the next is built. Timings are medians of `--repeats` runs
after a warm-up; the JSON records the machine, date and commit (_common.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from _common import machine_description, median, sync, timed, write_json
from core_workload import build_workload, random_mixes

HERE = Path(__file__).resolve().parent
LADDER = ("base", "anchors_unused", "one_anchor", "lerpray")


class NoAnchors:
    """The engine's view of a model with no anchors: the same scheduler, cache and sampling, no LoRA at all."""

    def __init__(self, model, names: list[str]) -> None:
        from lerpray.mixing import AnchorLayout

        # The anchors' names, so the very same requests run; their coefficients touch nothing here.
        self.model, self.layout = model, AnchorLayout(anchors=tuple(names), attributes={})

    def set_coeffs(self, coeffs, host=None) -> None:
        pass

    bind_coeffs = set_coeffs

    def merged(self, coeffs):
        return nullcontext()


def mixes(w, kind: str, n: int) -> list[tuple[float, ...]]:
    k = w.coeffs.shape[1]
    if kind == "anchors_unused":
        return [(0.0,) * k] * n
    if kind == "one_anchor":
        return [(1.0,) + (0.0,) * (k - 1)] * n
    return [tuple(w.coeffs[i % len(w.coeffs)].tolist()) for i in range(n)]


def requests(w, n: int, new: int, prompts: list[str] | None = None, tag: str = "r", kind: str = "lerpray"):
    from lerpray.model import GenerationRequest, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    prompts = prompts or w.prompts
    return [GenerationRequest(coeffs=mix, prompt=prompts[i % len(prompts)], sampling=params, request_id=f"{tag}{i}")
            for i, mix in enumerate(mixes(w, kind, n))]


def make_engine(w, batch: int, anchors: bool, mode: str | None):
    from lerpray.model import Engine

    imodel = w.imodel if anchors else NoAnchors(w.base, w.anchor_names)
    # Without anchors there is nothing to pin: every anchor "fits" its capacity.
    engine = Engine(imodel, w.tokenizer, max_batch_size=batch, decode_mode=mode,
                    active_capacity=None if anchors else len(w.anchor_names))
    return engine


def throughput(w, batch: int, new: int, repeats: int, kinds, mode) -> dict:
    """tokens/s per ladder kind; one engine over the plain model (base), one over the anchors (the others)."""
    rows = {}
    for anchors in (False, True):
        todo = [k for k in kinds if (k != "base") == anchors]
        if not todo:
            continue
        engine = make_engine(w, batch, anchors, mode)
        engine.generate(requests(w, batch, 2, tag="warm"))
        for kind in todo:
            times, cpu = [], []
            for r in range(repeats):
                start = time.process_time()
                seconds, results = timed(lambda r=r, kind=kind, engine=engine: engine.generate(
                    requests(w, batch, new, tag=f"{kind}{r}-", kind=kind)), w.device)
                cpu.append(time.process_time() - start)
                assert all(x.completion_tokens == new for x in results)
                times.append(seconds)
            # CPU seconds of this process (all its threads): steadier than wall time when other jobs share it.
            rows[kind] = {"tokens_per_s": round(batch * new / median(times), 1),
                          "seconds": [round(t, 3) for t in times], "tokens_per_cpu_s": round(batch * new / median(cpu), 1)}
            if engine._graphs is not None:
                rows[kind]["graph_captures"] = engine._graphs.captures
        engine.close()
    return rows


def hf_generate(w, batch: int, new: int, repeats: int) -> dict:
    """HF `generate` (eager, DynamicCache) on the plain model: the baseline a user would otherwise run."""
    ids = w.ids[:batch]
    kw = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    w.base.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)
    times = [timed(lambda: w.base.generate(ids, **kw), w.device)[0] for _ in range(repeats)]
    return {"tokens_per_s": round(batch * new / median(times), 1), "seconds": [round(t, 3) for t in times]}


def prefill_itl(w, long_tokens: int, new: int, mode) -> dict:
    """Inter-token latency of 15 decoding rows while a `long_tokens` prompt is admitted among them."""
    engine = make_engine(w, 16, True, mode)
    for r in requests(w, 15, new, tag="short"):
        engine.add(r)
    words = (w.prompts[0] + " ") * (1 + long_tokens // max(1, len(w.ids[0])))
    ids = w.tokenizer(words, add_special_tokens=True)["input_ids"][:long_tokens]
    long_prompt = w.tokenizer.decode(ids, skip_special_tokens=True)
    last: dict[str, float] = {}
    gaps, during = [], []
    long_added = long_done = None
    step = 0
    while engine.has_work():
        if step == 8:
            engine.add(requests(w, 1, 4, prompts=[long_prompt], tag="long")[0])
            long_added = time.perf_counter()
        events = engine.step()
        sync(w.device)
        now = time.perf_counter()
        for e in events:
            if e.request_id.startswith("short"):
                if e.request_id in last:
                    gap = now - last[e.request_id]
                    (during if long_added and not long_done else gaps).append(gap)
                last[e.request_id] = now
            elif long_done is None:
                long_done = now
        step += 1
    engine.close()
    ordered = sorted(during)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None
    base = median(gaps + during)
    return {
        "long_prompt_tokens": len(ids), "short_rows": 15, "median_itl_ms": round(1e3 * base, 2),
        "median_itl_outside_prefill_ms": round(1e3 * median(gaps), 2) if gaps else None,
        "p99_itl_during_prefill_ms": round(1e3 * p99, 2) if p99 else None,
        "p99_over_median": round(p99 / base, 2) if p99 else None,
        "long_ttft_s": round(long_done - long_added, 3) if long_done else None,
        "prefill_chunk": engine.prefill_chunk,
    }


def decode_step(w, batch: int, mode, block_bytes: int = 2**30) -> dict:
    """One decode step at `batch` rows (base model) against one read of the weights at the copy bandwidth."""
    engine = make_engine(w, batch, False, mode)
    for r in requests(w, batch, 64, tag="d"):
        engine.add(r)
    while engine._scheduler.prefilling():
        engine.step()
    engine.step()
    seconds = median([timed(engine.step, w.device)[0] for _ in range(20)])
    engine.close()
    weights = sum(p.numel() * p.element_size() for p in w.base.parameters())
    block = torch.empty(block_bytes, dtype=torch.uint8, device=w.device)
    copy_s = median([timed(lambda: block.clone(), w.device)[0] for _ in range(5)])
    bandwidth = 2 * block_bytes / copy_s  # a clone reads and writes the block
    return {"batch": batch, "step_ms": round(1e3 * seconds, 3), "weight_bytes": weights,
            "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1), "weight_read_ms": round(1e3 * weights / bandwidth, 3),
            "step_over_weight_read": round(seconds * bandwidth / weights, 2)}


def new_mix_captures(w, batch: int, mode) -> dict:
    engine = make_engine(w, batch, True, mode)
    before = engine._graphs.captures
    engine.generate(requests(w, batch, 4, tag="a"))
    reqs = requests(w, batch, 4, tag="b")
    fresh = random_mixes(batch, w.coeffs.shape[1], seed=4242)
    for i, r in enumerate(reqs):
        reqs[i] = type(r)(coeffs=tuple(fresh[i].tolist()), prompt=r.prompt, sampling=r.sampling, request_id=r.request_id)
    engine.generate(reqs)
    out = {"captures_at_start_up": before, "captures_after_new_mixes": engine._graphs.captures,
           "batch_buckets": engine._graphs.buckets, "length_buckets": engine._graphs.lengths}
    engine.close()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--cpu-rehearsal", action="store_true", help="the --gpu phases on tiny shapes, on the CPU")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--new", nargs="+", type=int, default=None, help="new tokens per request")
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--kinds", nargs="+", default=None, choices=LADDER)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--long-prompt", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-itl", action="store_true", help="skip the prefill_itl measurement")
    parser.add_argument("--itl-new", type=int, default=None, help="new tokens of the short rows in prefill_itl")
    parser.add_argument("--budget-s", type=float, default=420.0, help="(GPU) start no new point after this long")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    gpu_like, rehearsal = args.gpu or args.cpu_rehearsal, args.cpu_rehearsal
    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-rehearsal for the same phases on the CPU", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    mode = "bucket" if rehearsal else None  # the graphs' function, eagerly; CUDA graphs on a GPU
    pick = (lambda given, gpu, cpu_rehearsal, quick, cpu:  # noqa: E731
            given or (gpu if args.gpu else cpu_rehearsal if rehearsal else quick if args.quick else cpu))
    models = pick(args.models, ["llama1b", "llama8b"], ["tiny"], ["tiny"], ["bundled"])
    batches = pick(args.batches, [16, 64, 128], [4, 8], [4], [16, 32])
    news = pick(args.new, [128], [8], [8], [32, 512])
    kinds = pick(args.kinds, list(LADDER), list(LADDER), ["base", "lerpray"], ["base", "lerpray"])
    prompt_tokens = pick(args.prompt_tokens, 128, 16, 32, 32)
    repeats = pick(args.repeats, 2, 1, 2, 2)
    long_prompt, itl_new = pick(args.long_prompt, 1500, 64, 1500, 1500), pick(args.itl_new, 64, 12, 160, 160)
    dtype = torch.bfloat16 if gpu_like else torch.float32
    default_out = HERE / "results" / ("engine_gpu.json" if args.gpu else "engine_cpu.json")
    if rehearsal or args.quick:
        default_out = Path(tempfile.gettempdir()) / "lerpray-bench" / "engine_cpu_rehearsal.json"
    out = Path(args.out) if args.out else default_out
    result = {"machine": machine_description(device), "args": vars(args), "decode_mode": mode or "default",
              "models": {}}
    started = time.perf_counter()

    def over_budget() -> bool:
        return args.gpu and time.perf_counter() - started > args.budget_s

    with torch.inference_mode():
        for name in models:
            w = build_workload(name, num_anchors=10, rank=32, lora_alpha=16.0, max_requests=max(batches),
                               prompt_tokens=prompt_tokens, device=device, dtype=dtype,
                               workdir=Path(tempfile.mkdtemp()))
            del w.peft  # only the PEFT methods of bench_core need it
            entry = result["models"][name] = {"throughput": {}, "prompt_tokens": prompt_tokens}
            for new in news:
                for batch in batches:
                    if over_budget():
                        entry["throughput"][f"batch{batch}_new{new}"] = "skipped: time budget"
                        continue
                    row = throughput(w, batch, new, repeats, kinds, mode)
                    if gpu_like and batch == max(batches):
                        row["hf_generate"] = hf_generate(w, batch, new, repeats)
                    for kind in ("base", "hf_generate"):
                        if kind in row and "lerpray" in row:
                            row[f"lerpray_over_{kind}"] = round(
                                row["lerpray"]["tokens_per_s"] / row[kind]["tokens_per_s"], 3)
                    entry["throughput"][f"batch{batch}_new{new}"] = row
                    print(name, batch, new, {k: v["tokens_per_s"] for k, v in row.items() if isinstance(v, dict)},
                          flush=True)
                    write_json(out, result, device)
            if not (args.quick or args.no_itl or over_budget()):
                entry["prefill_itl"] = prefill_itl(w, long_prompt, itl_new, mode)
                print(name, entry["prefill_itl"], flush=True)
            if gpu_like and not over_budget():
                entry["decode_step"] = decode_step(w, max(batches) if rehearsal else 64, mode,
                                                   2**24 if rehearsal else 2**30)
                entry["graphs"] = new_mix_captures(w, min(batches) if rehearsal else 16, mode)
                print(name, entry["decode_step"], entry["graphs"], flush=True)
            write_json(out, result, device)
            del w
            if device == "cuda":
                torch.cuda.empty_cache()
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

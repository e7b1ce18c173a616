"""Engine benchmark: lerpray's engine against the same engine without anchors, the previous engine and HF generate.

    .venv/bin/python benchmarks/bench_engine.py                  # CPU: SmolLM2-135M fp32 -> results/engine_cpu.json
    .venv/bin/python benchmarks/bench_engine.py --quick          # CPU smoke on a tiny random Llama (seconds)
    PYTHONPATH=. python3 benchmarks/bench_engine.py --gpu        # CUDA: ~1B and 8B Llama shapes, bf16 -> --out FILE

Workload: K = 10 random non-zero LoRA anchors, r = 32, lora_alpha = 16 on q, k, v, o (core_workload.py),
every request its own mix (the paper's parametrisation), greedy, EOS ignored so every row runs to the end.

    throughput   tokens/s of N requests x `new` tokens through `Engine.generate`, for
                 lerpray (anchors, a mix per row), no_anchors (the same engine over the plain model), previous (the
                 engine before the slot cache, loaded from git history at commit PREVIOUS) and, on GPU, HF generate
    prefill_itl  15 requests decoding; one long prompt arrives; the 15 rows' inter-token latency during its prefill
                 (p99) against their median: chunked prefill keeps the streams flowing
    decode_step  (GPU) one decode step at batch 64 vs the time to read the weights once at the measured copy
                 bandwidth; CUDA-graph captures before/after requests with never-seen mixes

Timings are medians of `--repeats` runs after a warm-up; the JSON records the machine and load (see _common.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from _common import machine_description, median, sync, timed, write_json
from core_workload import build_workload, random_mixes

HERE = Path(__file__).resolve().parent
PREVIOUS = "f5bd406"  # the last commit with the DynamicCache engine


class NoAnchors:
    """The engine's view of a model with no anchors: the same scheduler, cache and sampling, no LoRA at all."""

    def __init__(self, model, names: list[str]) -> None:
        from lerpray.mixing import AnchorLayout

        # The anchors' names, so the very same requests run; their coefficients touch nothing here.
        self.model, self.layout = model, AnchorLayout(anchors=tuple(names), attributes={})

    def set_coeffs(self, coeffs) -> None:
        pass

    bind_coeffs = set_coeffs

    def merged(self, coeffs):
        return nullcontext()


def previous_engine_class():
    """The engine as it was at PREVIOUS (git show), imported as a module of its own."""
    source = subprocess.run(["git", "show", f"{PREVIOUS}:lerpray/model/engine.py"], capture_output=True, text=True,
                            check=True, cwd=HERE.parent).stdout
    path = Path(tempfile.mkdtemp()) / "previous_engine.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("previous_engine", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["previous_engine"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module.Engine


def requests(w, n: int, new: int, prompts: list[str] | None = None, tag: str = "r"):
    from lerpray.model import GenerationRequest, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=new)
    prompts = prompts or w.prompts
    return [GenerationRequest(coeffs=tuple(w.coeffs[i % len(w.coeffs)].tolist()), prompt=prompts[i % len(prompts)],
                              sampling=params, request_id=f"{tag}{i}") for i in range(n)]


def make_engine(kind: str, w, batch: int, **kw):
    from lerpray.model import Engine

    if kind == "lerpray":
        engine = Engine(w.imodel, w.tokenizer, max_batch_size=batch, **kw)
    elif kind == "no_anchors":
        engine = Engine(NoAnchors(w.base, w.anchor_names), w.tokenizer, max_batch_size=batch, **kw)
    else:
        engine = previous_engine_class()(w.imodel, w.tokenizer, max_batch_size=batch)
    engine._eos = frozenset()  # EOS ignored: every row runs to max_tokens, so all methods do the same work
    return engine


def throughput(w, kind: str, batch: int, new: int, repeats: int) -> dict:
    engine = make_engine(kind, w, batch)
    engine.generate(requests(w, batch, 2, tag="warm"))
    times, cpu = [], []
    for r in range(repeats):
        start = time.process_time()
        seconds, results = timed(lambda r=r: engine.generate(requests(w, batch, new, tag=f"t{r}-")), w.device)
        cpu.append(time.process_time() - start)
        assert all(x.completion_tokens == new for x in results)
        times.append(seconds)
    # CPU seconds of this process (all its threads): steadier than wall time when other jobs share the machine.
    out = {"tokens_per_s": round(batch * new / median(times), 1), "seconds": [round(t, 3) for t in times],
           "tokens_per_cpu_s": round(batch * new / median(cpu), 1)}
    if getattr(engine, "_graphs", None) is not None:
        out["cuda_graph_captures"] = engine._graphs.captures
    return out


def hf_generate(w, batch: int, new: int, repeats: int) -> dict:
    """HF `generate` (eager, DynamicCache) on the plain model: the baseline a user would otherwise run."""
    ids = w.ids[:batch]
    kw = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    w.base.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)
    times = [timed(lambda: w.base.generate(ids, **kw), w.device)[0] for _ in range(repeats)]
    return {"tokens_per_s": round(batch * new / median(times), 1), "seconds": [round(t, 3) for t in times]}


def prefill_itl(w, kind: str, long_tokens: int, new: int) -> dict:
    """Inter-token latency of 15 decoding rows while a `long_tokens` prompt is admitted among them."""
    engine = make_engine(kind, w, 16)
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
    ordered = sorted(during)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None
    base = median(gaps + during)
    return {
        "long_prompt_tokens": len(ids), "short_rows": 15, "median_itl_ms": round(1e3 * base, 2),
        "median_itl_outside_prefill_ms": round(1e3 * median(gaps), 2) if gaps else None,
        "p99_itl_during_prefill_ms": round(1e3 * p99, 2) if p99 else None,
        "p99_over_median": round(p99 / base, 2) if p99 else None,
        "long_ttft_s": round(long_done - long_added, 3) if long_done else None,
        "prefill_chunk": getattr(engine, "prefill_chunk", None),
    }


def decode_step(w, batch: int) -> dict:
    """(GPU) one decode step at `batch` rows against one read of the weights at the card's copy bandwidth."""
    engine = make_engine("no_anchors", w, batch)
    for r in requests(w, batch, 64, tag="d"):
        engine.add(r)
    while engine._scheduler.prefilling():
        engine.step()
    engine.step()
    seconds = median([timed(engine.step, w.device)[0] for _ in range(20)])
    weights = sum(p.numel() * p.element_size() for p in w.base.parameters())
    block = torch.empty(2**30, dtype=torch.uint8, device=w.device)
    copy_s = median([timed(lambda: block.clone(), w.device)[0] for _ in range(5)])
    bandwidth = 2 * 2**30 / copy_s  # a clone reads and writes the block
    return {"batch": batch, "step_ms": round(1e3 * seconds, 3), "weight_bytes": weights,
            "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1), "weight_read_ms": round(1e3 * weights / bandwidth, 3),
            "step_over_weight_read": round(seconds * bandwidth / weights, 2)}


def new_mix_captures(w, batch: int) -> dict:
    engine = make_engine("lerpray", w, batch)
    engine.generate(requests(w, batch, 4, tag="a"))
    before = engine._graphs.captures
    fresh = random_mixes(batch, w.coeffs.shape[1], seed=4242)
    reqs = requests(w, batch, 4, tag="b")
    for r, mix in zip(reqs, fresh, strict=True):
        r.coeffs = tuple(mix.tolist())
    engine.generate(reqs)
    return {"captures_before": before, "captures_after_new_mixes": engine._graphs.captures}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--new", nargs="+", type=int, default=None, help="new tokens per request")
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--kinds", nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--long-prompt", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-itl", action="store_true", help="skip the prefill_itl measurement")
    parser.add_argument("--itl-new", type=int, default=160, help="new tokens of the short rows in prefill_itl")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    models = args.models or (["llama1b", "llama8b"] if args.gpu else ["tiny"] if args.quick else ["bundled"])
    batches = args.batches or ([16, 32, 64] if args.gpu else [4] if args.quick else [16, 32])
    news = args.new or ([128] if args.gpu else [8] if args.quick else [32, 512])
    kinds = args.kinds or (["lerpray", "no_anchors"] if args.gpu else ["lerpray", "no_anchors", "previous"])
    prompt_tokens = args.prompt_tokens or (128 if args.gpu else 32)
    dtype = torch.bfloat16 if args.gpu else torch.float32
    out = Path(args.out) if args.out else (HERE / "results" / ("engine_gpu.json" if args.gpu else "engine_cpu.json"))
    result = {"machine": machine_description(device), "args": vars(args), "models": {}}
    with torch.inference_mode():
        for name in models:
            workdir = Path(tempfile.mkdtemp())
            w = build_workload(name, num_anchors=10, rank=32, lora_alpha=16.0, max_requests=max(batches),
                               prompt_tokens=prompt_tokens, device=device, dtype=dtype, workdir=workdir)
            del w.peft  # only the PEFT methods of bench_core need it
            entry = result["models"][name] = {"throughput": {}, "prompt_tokens": prompt_tokens}
            for new in news:
                for batch in batches:
                    row = {kind: throughput(w, kind, batch, new, args.repeats) for kind in kinds}
                    if args.gpu and batch == max(batches):
                        row["hf_generate"] = hf_generate(w, batch, new, args.repeats)
                    for other in ("no_anchors", "previous"):
                        if other in row:
                            row[f"lerpray_over_{other}"] = round(
                                row["lerpray"]["tokens_per_s"] / row[other]["tokens_per_s"], 3)
                            row[f"lerpray_over_{other}_cpu"] = round(
                                row["lerpray"]["tokens_per_cpu_s"] / row[other]["tokens_per_cpu_s"], 3)
                    entry["throughput"][f"batch{batch}_new{new}"] = row
                    print(name, batch, new, {k: v["tokens_per_s"] for k, v in row.items() if isinstance(v, dict)},
                          flush=True)
                    write_json(out, result)
            if not (args.quick or args.no_itl):
                entry["prefill_itl"] = {kind: prefill_itl(w, kind, args.long_prompt, args.itl_new)
                                        for kind in ("lerpray", "previous")}
                print(name, entry["prefill_itl"], flush=True)
            if args.gpu:
                entry["decode_step"] = decode_step(w, 64)
                entry["cuda_graphs"] = new_mix_captures(w, 16)
            write_json(out, result)
            del w
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

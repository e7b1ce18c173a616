"""Summary, targets, table and plot of the core benchmark (see bench_core.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import median

# (target key, one-mix-at-a-time method, minimum speed-up of lerpray on the per-mix workload; None = report only)
_RATIO_TARGETS = [
    ("vs_merge_per_mix", "merge_per_mix", 6.0),
    ("vs_paper_per_mix", "paper_per_mix", 10.0),
    ("vs_peft_cat_per_mix", "peft_cat_per_mix", None),
]


def summarise(args: argparse.Namespace, machine: dict, runs: dict, ttft: dict | None, memory: dict | None,
              total_s: float) -> dict:
    rows = [_row(method, size, items) for (method, size), items in runs.items()]
    by_key = {(r["method"], r["requests"]): r for r in rows}
    tokens = {key: items[-1][0].tokens for key, items in runs.items()}
    for r in rows:
        base = by_key.get(("base", r["requests"]))
        r["vs_base_same_batch"] = _ratio(r, base) if r["method"] != "base" else 1.0
        r["vs_base_same_batch_cpu"] = _ratio(r, base, "tokens_per_cpu_s_median") if r["method"] != "base" else 1.0
        reference = tokens.get(("lerpray", r["requests"]))
        r["agreement_with_lerpray"] = _agreement(tokens[(r["method"], r["requests"])], reference)
    config = {k: v for k, v in vars(args).items() if k not in ("rss_child",)}
    return {
        "benchmark": "core interpolation",
        "machine": machine,
        "config": config,
        "results": rows,
        "ttft": ttft,
        "memory": memory,
        "targets": _targets(args, by_key, ttft, memory),
        "total_wall_s": round(total_s, 1),
    }


def _row(method: str, size: int, items: list) -> dict:
    walls = [run.wall_s * size / n for run, n in items]  # scaled to the whole workload when sampled
    rates = [run.generated / run.wall_s for run, _ in items]
    cpu_rates = [run.generated / run.cpu_s for run, _ in items]
    n = items[0][1]
    return {
        "method": method,
        "requests": size,
        "measured_mixes": n,
        "repeats": len(items),
        "generated_tokens": int(items[-1][0].generated * size / n),
        "wall_s_median": round(median(walls), 3),
        "tokens_per_s_median": round(median(rates), 2),
        "cpu_s_median": round(median([run.cpu_s * size / n for run, n in items]), 3),
        "tokens_per_cpu_s_median": round(median(cpu_rates), 2),
        "ttft_ms_median": round(1e3 * median([run.ttft_s for run, _ in items]), 2),
        "wall_s_all": [round(x, 3) for x in walls],
    }


def _ratio(row: dict | None, other: dict | None, key: str = "tokens_per_s_median") -> float | None:
    if row is None or other is None:
        return None
    return round(row[key] / other[key], 3)


def _agreement(tokens: torch.Tensor, reference: torch.Tensor | None) -> dict | None:
    """How many greedy tokens equal lerpray's (same rows); a sanity check that the methods compute one model."""
    if reference is None:
        return None
    n = min(tokens.shape[0], reference.shape[0])
    same = tokens[:n] == reference[:n]  # [n, new_tokens]
    return {"identical_rows": f"{int(same.all(dim=1).sum())}/{n}",
            "equal_tokens_frac": round(float(same.float().mean()), 4)}


def _check(value: float | None, op: str, threshold: float | None, value_cpu: float | None = None) -> dict:
    """One target: `value` from wall-clock medians (what the target means); `value_cpu` from CPU-time medians."""

    def met(v: float | None) -> bool | None:
        if v is None or threshold is None:
            return None
        return bool(v >= threshold) if op == "ge" else bool(v <= threshold)

    return {"value": value, "target": None if threshold is None else f"{'>=' if op == 'ge' else '<='} {threshold}",
            "met": met(value), "value_cpu": value_cpu, "met_cpu": met(value_cpu)}


def _targets(args: argparse.Namespace, by_key: dict, ttft: dict | None, memory: dict | None) -> dict:
    targets = {}
    for variant in ("lerpray", "lerpray_engine"):
        for size in args.batches:
            row = by_key.get((variant, size))
            targets[f"{variant}_vs_base_batch{size}"] = _check(
                row and row["vs_base_same_batch"], "ge", 0.8, row and row["vs_base_same_batch_cpu"])
        workload = args.per_mix_batches[0] if args.per_mix_batches else None
        for key, method, threshold in _RATIO_TARGETS:
            mine, theirs = by_key.get((variant, workload)), by_key.get((method, workload))
            targets[f"{variant}_{key}_{workload}mixes"] = _check(
                _ratio(mine, theirs), "ge", threshold, _ratio(mine, theirs, "tokens_per_cpu_s_median"))
    targets["ttft_new_minus_seen_ms"] = _check(ttft and ttft["new_minus_seen_ms"], "le", 5.0,
                                               ttft and ttft["new_minus_seen_cpu_ms"])
    targets["rss_growth_pct_over_distinct_mixes"] = _check(memory and memory["rss_growth_pct"], "le", 5.0)
    return targets


def print_table(report: dict) -> None:
    print("\n| method | requests | wall s | tokens/s | vs base | CPU s | tokens/CPU-s | vs base (CPU) | TTFT ms "
          "| identical rows vs lerpray |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["results"]:
        agree = r["agreement_with_lerpray"]
        print(f"| {r['method']} | {r['requests']} | {r['wall_s_median']:.2f} | {r['tokens_per_s_median']:.1f} | "
              f"{_fmt(r['vs_base_same_batch'])} | {r['cpu_s_median']:.2f} | {r['tokens_per_cpu_s_median']:.1f} | "
              f"{_fmt(r['vs_base_same_batch_cpu'])} | {r['ttft_ms_median']:.0f} | "
              f"{agree['identical_rows'] if agree else '-'} |")
    print("\ntargets (wall clock; CPU time):")
    for key, t in report["targets"].items():
        print(f"  {key}: {t['value']} / {t['value_cpu']} (target {t['target']}) -> {t['met']} / {t['met_cpu']}")
    memory = report["memory"]
    if memory:
        print(f"memory: RSS {memory['rss_before_mib']} -> {memory['rss_after_mib']} MiB over "
              f"{memory['distinct_mixes']} mixes ({memory['rss_growth_pct']} %)")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot_throughput(report: dict, out: Path) -> Path | None:
    """Grouped bars per method, one colour per batch size: tokens per wall second, and (CPU runs) per CPU second."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = report["results"]
    machine, cfg = report["machine"], report["config"]
    panels = [("tokens_per_s_median", "generated tokens / wall second (median)")]
    if not machine.get("gpu_name"):
        panels.append(("tokens_per_cpu_s_median", "generated tokens / CPU second (median)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        _bars(ax, rows, key)
        ax.set_ylabel(label)
    where = machine.get("gpu_name") or f"{machine['cpu_model']}, {machine['torch_threads']} thread(s)"
    load = machine.get("loadavg_1_5_15")
    fig.suptitle(f"{cfg['model']} {cfg['dtype']}, K={cfg['anchors']} r={cfg['rank']}, {cfg['prompt_tokens']}+"
                 f"{cfg['new_tokens']} tokens, greedy - {where}" + (f", load {load[0]:.0f}" if load else ""),
                 fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _bars(ax, rows: list[dict], key: str) -> None:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sizes = sorted({r["requests"] for r in rows})
    width = 0.8 / len(sizes)
    for i, size in enumerate(sizes):
        points = [(j, r[key]) for j, m in enumerate(methods)
                  for r in rows if r["method"] == m and r["requests"] == size]
        bars = ax.bar([j + i * width for j, _ in points], [v for _, v in points], width, label=f"{size} requests")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + width * (len(sizes) - 1) / 2 for j in range(len(methods))], methods, rotation=20, fontsize=8)
    ax.legend(fontsize=8)


if __name__ == "__main__":  # re-plot a saved result: python benchmarks/core_report.py RESULT.json OUT.png
    import json
    import sys

    print(plot_throughput(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])))

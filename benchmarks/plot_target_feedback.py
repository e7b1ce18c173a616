"""Targets asked vs means achieved, per attribute: free-length replies against replies of at least `min_tokens`.

    python benchmarks/plot_target_feedback.py --out docs/figures/target_feedback_repro.png

Reads benchmarks/measure_target_feedback.py's result files (`--before` and `--after` name patterns with `{attr}`)
and draws, per attribute, each target (x) against its achieved mean (y) with the 95 % interval, open loop and
closed loop, both axes as a fraction of that calibration's reachable range, so that the diagonal is a target met.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ATTRIBUTES = ("sentiment", "simplicity", "formality", "humor")
STYLE = {"open": ("o", "#1f77b4"), "closed": ("s", "#d62728")}


def points(doc: dict, mode: str) -> list[tuple[float, float, float, float]]:
    """(target, achieved, interval low, interval high) per target, as fractions of the reachable range."""
    lo, hi = doc["reachable"]
    span = hi - lo
    out = []
    for t in doc["targets"]:
        if mode in t:
            a, (il, ih) = t[mode]["achieved"], t[mode]["interval95"]
            out.append(((t["target"] - lo) / span, (a - lo) / span, (il - lo) / span, (ih - lo) / span))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default="target_feedback_repro_{attr}_cal240.json", help="free-length replies")
    p.add_argument("--after", default="target_feedback_repro_{attr}_min32.json", help="replies of >= min_tokens")
    p.add_argument("--out", type=Path, default=Path("docs/figures/target_feedback_repro.png"))
    args = p.parse_args()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(ATTRIBUTES), 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(ATTRIBUTES), sharex=True, sharey=True)
    for row, (pattern, label) in enumerate([(args.before, "free length (end at EOS)"),
                                            (args.after, "at least 32 tokens")]):  # fmt: skip
        for col, attr in enumerate(ATTRIBUTES):
            ax = axes[row][col]
            ax.plot([-0.2, 1.2], [-0.2, 1.2], color="0.7", lw=1)
            ax.fill_between([-0.2, 1.2], [-0.35, 1.05], [-0.05, 1.35], color="0.92")  # within 15 % of the range
            doc = json.loads((RESULTS / pattern.format(attr=attr)).read_text())
            for mode, (marker, color) in STYLE.items():
                pts = points(doc, mode)
                if not pts:
                    continue
                shift = -0.015 if mode == "open" else 0.015
                ax.errorbar([x + shift for x, *_ in pts], [y for _, y, _, _ in pts],
                            yerr=[[y - lo for _, y, lo, _ in pts], [hi - y for _, y, _, hi in pts]],
                            fmt=marker, color=color, ms=5, capsize=2, label=f"{mode} loop")  # fmt: skip
            summary = doc["summary"]
            text = "\n".join(f"{m}: {summary[m]['abs_error_of_mean_pct']:.1f} %" for m in STYLE if m in summary)
            ax.text(0.04, 0.96, text, transform=ax.transAxes, va="top", fontsize=8)
            ax.set_xlim(-0.1, 1.1)
            ax.set_ylim(-0.4, 1.4)
            if row == 0:
                ax.set_title(f"{attr} ({doc['scorer']})", fontsize=9)
            if row == 1:
                ax.set_xlabel("target (fraction of the reachable range)", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{label}\nachieved mean (fraction)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Targets on 3 unseen domains (72 openings x 2 seeds), |mean - target| average per loop; "
                 "band: within 15 % of the range", fontsize=9)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

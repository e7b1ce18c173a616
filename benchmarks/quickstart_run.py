"""The quickstart as a benchmark: run `lerpray quickstart` and keep what it printed as a result file.

    python benchmarks/quickstart_run.py --fresh --workdir runs/quickstart-bench   # train from scratch (~10 min, 2 cores)
    python benchmarks/quickstart_run.py                                           # reuse runs/quickstart (~2 min)

Writes benchmarks/results/quickstart[_fresh].json: the summary's mean VADER (± SE, n) per alpha, its steps, slope
and change, the target demo's outcomes, every stage's wall seconds, the load average before and after, and the
machine, date and commit (the numbers README.md and docs/quickstart.md quote).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _common import write_json  # benchmarks/_common.py (the script's folder is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--fresh", action="store_true", help="rebuild the corpus and retrain the anchors")
    parser.add_argument("--out", type=Path, default=None, help="default results/quickstart[_fresh].json")
    args = parser.parse_args(argv)

    from lerpray.quickstart.config import Plan
    from lerpray.quickstart.pipeline import run_quickstart

    load_before = os.getloadavg()
    report = run_quickstart(Plan(workdir=args.workdir, fresh=args.fresh))
    t = report.trend
    doc = {
        "command": "lerpray quickstart" + (" --fresh" if args.fresh else ""),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "reused": {"corpora": report.corpora_reused, "anchors": report.anchors_reused},
        "summary": {
            "alphas": [{"alpha": a, "mean": t.means[a], "se": t.ses[a], "n": t.counts[a]} for a in t.means],
            "steps": [{"from": a, "to": b, "diff": d, "se": s, "resolved": ok} for a, b, d, s, ok in t.steps],
            "verdict": t.verdict,
            "slope": t.slope,
            "slope_ci": list(t.slope_ci),
            "change": t.change,
            "change_se": t.change_se,
        },
        "targets": [vars(outcome) for outcome in report.targets],
        "seconds": {**report.seconds, "total": report.total_s},
    }
    out = args.out or RESULTS / ("quickstart_fresh.json" if args.fresh else "quickstart.json")
    write_json(out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

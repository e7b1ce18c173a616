"""`lerpray eval`: attribute sweeps, weight-space analysis of an anchor set, and pole classifiers.

lerpray eval sweep jobs/configs/eval_sweep.yaml [--out DIR] [--anchors URI] [--server URL] [--replot]
lerpray eval sweep CONFIG --num-gpus 1 --upload s3://bucket/sweeps/run1      # as a Ray task on a GPU node
lerpray eval weights s3://bucket/sets/four-attributes --out results/weights
lerpray eval calibrate runs/quickstart/anchors --scorers vader --out results/calibration [--no-save]
lerpray eval classifiers data/corpora --out data/classifiers
lerpray eval corpora ...     the same as `lerpray data corpora` (kept for scripts that use it)
"""

from __future__ import annotations

import argparse

from lerpray.configs import CALIBRATION_MAX_TOKENS, CALIBRATION_MIN_TOKENS
from lerpray.data.commands import add_corpora_parser


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate anchor sets: sweeps, weight-space analysis, classifiers")
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")

    sweep = sub.add_parser("sweep", help="sweep mixes over prompts; write CSVs, plots and report.md")
    sweep.add_argument("config", help="sweep YAML (see jobs/configs/eval_sweep.yaml)")
    sweep.add_argument("--out", help="output folder (overrides the config's `out`)")
    sweep.add_argument("--anchors", metavar="URI", help="anchor set to run in-process (overrides the config)")
    sweep.add_argument("--server", metavar="URL", help="generate through a running lerpray server instead")
    sweep.add_argument("--replot", action="store_true",
                       help="redo the tables, plots and report of the finished sweep in `out`; generate nothing")
    sweep.add_argument("--num-gpus", type=float, default=0.0,
                       help="run the sweep as a Ray task with these GPUs (on a cluster: a GPU node)")
    sweep.add_argument("--num-cpus", type=float, default=1.0, help="CPUs of that Ray task (with --num-gpus)")
    sweep.add_argument("--upload", metavar="URI", help="copy the output folder to s3://bucket/prefix or a folder "
                       "(on a cluster the task's node is not the machine you submit from)")
    sweep.set_defaults(func=_sweep)

    weights = sub.add_parser("weights", help="cosine similarity between the anchors' updates, per layer and overall")
    weights.add_argument("uri", help="anchor set: a folder or s3://bucket/prefix")
    weights.add_argument("--out", required=True, metavar="DIR", help="writes weights.json and weights_cosine.png")
    weights.set_defaults(func=_weights)

    calibrate = sub.add_parser("calibrate", help="fit the set's response curves (for `target` requests) and save "
                               "them beside the set")
    calibrate.add_argument("anchors", metavar="SET", help="anchor set: a folder or s3://bucket/prefix")
    calibrate.add_argument("--scorers", required=True,
                           help="comma-separated scorer specs, one per attribute (vader, fkgl, a classifier .json; "
                           "spec=ATTRIBUTE to name the attribute it measures)")
    calibrate.add_argument("--out", required=True, metavar="DIR", help="the sweep, calibration.json and its plot")
    calibrate.add_argument("--alphas", help="comma-separated alphas; must include 0 and 1 (default -0.5,0,.25,...,1.5)")
    calibrate.add_argument("--prompts", metavar="FILE",
                           help="prompt file: one per line, or JSONL with text and domain (default: lerpray's 312 "
                           "shipped completion openings in 13 domains)")
    calibrate.add_argument("--split", default="even", choices=["even", "odd", "all"],
                           help="which prompts (by index) to calibrate on; default even, leaving odd held out")
    calibrate.add_argument("--domains", help="comma-separated: only the prompts of these domains")
    calibrate.add_argument("--chat", action="store_true",
                           help="send each prompt as a user message through the chat template (instruction prompts)")
    calibrate.add_argument("--samples", type=int, default=1, help="generations per prompt and alpha")
    calibrate.add_argument("--max-tokens", type=int, default=CALIBRATION_MAX_TOKENS)
    calibrate.add_argument("--min-tokens", type=int, default=CALIBRATION_MIN_TOKENS,
                           help="no EOS before this many tokens, so replies are long enough to carry the anchors' "
                           "effect and to score; target requests that set no min_tokens get this one (0: replies "
                           "end at EOS)")
    calibrate.add_argument("--temperature", type=float, default=0.7)
    calibrate.add_argument("--resamples", type=int, default=200, help="bootstrap resamples over prompts")
    calibrate.add_argument("--batch-size", type=int, default=32)
    calibrate.add_argument("--min-z", type=float, default=2.0,
                           help="refuse a curve whose alpha 0 -> 1 change is within this many standard errors of 0")
    calibrate.add_argument("--no-save", action="store_true", help="write only to --out, not beside the set")
    calibrate.set_defaults(func=_calibrate)

    add_corpora_parser(sub, help_text="build attribute-pole corpora (the same as `lerpray data corpora`)")

    classifiers = sub.add_parser("classifiers", help="fit a sentence-embedding classifier per attribute of a corpus")
    classifiers.add_argument("corpora", help="a folder built by `lerpray data corpora`")
    classifiers.add_argument("--out", required=True, metavar="DIR",
                             help="writes <attribute>.json (a sweep scorer spec) per attribute and metrics.json")
    classifiers.add_argument("--attributes", help="comma-separated; default: every attribute of the corpora")
    classifiers.add_argument("--split", default="heldout", choices=["heldout", "train"],
                             help="texts to fit on (default: the held-out split, which the anchors never saw)")
    classifiers.set_defaults(func=_classifiers)


def _sweep(args: argparse.Namespace) -> int:
    from lerpray.eval.config import load_sweep_config
    from lerpray.eval.report import rewrite_outputs
    from lerpray.eval.sweep import run_sweep

    overrides = {k: v for k, v in {"out": args.out, "anchors": args.anchors, "server": args.server}.items() if v}
    config = load_sweep_config(args.config, overrides)
    if args.num_gpus > 0 and not args.replot:  # the whole sweep as one Ray task on a GPU node
        import ray

        from lerpray.ray_cluster import connect_ray

        if config.device == "cpu":
            print("note: --num-gpus given but the config says device: cpu; set device: cuda to use the GPU")
        connect_ray(None)
        remote = ray.remote(num_gpus=args.num_gpus, num_cpus=args.num_cpus)(sweep_and_upload)
        print(f"report: {ray.get(remote.remote(config, args.upload))}")
        return 0
    outputs = rewrite_outputs(config.out) if args.replot else run_sweep(config)
    print(f"wrote {outputs.generations}")
    for path in outputs.plots:
        print(f"wrote {path}")
    if args.upload:
        upload_folder(outputs.out, args.upload)
        print(f"uploaded {outputs.out} to {args.upload}")
    print(f"report: {outputs.report}")
    return 0


def sweep_and_upload(config, upload_uri: str | None) -> str:
    """The whole sweep on whatever node runs it (a Ray task with --num-gpus); the report's path, or its URI."""
    from lerpray.eval.sweep import run_sweep

    outputs = run_sweep(config)
    if upload_uri is None:
        return str(outputs.report)
    upload_folder(outputs.out, upload_uri)
    return f"{upload_uri.rstrip('/')}/{outputs.report.name}"


def upload_folder(folder, uri: str) -> list[str]:
    """Copy every file under `folder` to the store at `uri` (S3 or a local folder); the keys written."""
    from lerpray.anchors import open_store

    store = open_store(uri)
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = path.relative_to(folder).as_posix()
        store.write_bytes(key, path.read_bytes())
        keys.append(key)
    return keys


def _calibrate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from lerpray.anchors import open_set
    from lerpray.anchors.calibration import save_calibration
    from lerpray.configs import SamplingSettings
    from lerpray.eval.calibrate import DEFAULT_CALIBRATION_ALPHAS, calibrate, plot_calibration
    from lerpray.eval.config import ScorerConfig
    from lerpray.eval.prompt_sets import load_prompt_set

    scorers = []
    for item in (s.strip() for s in args.scorers.split(",") if s.strip()):
        spec, _, attribute = item.partition("=")
        scorers.append(ScorerConfig(spec=spec, attribute=attribute or None))
    alphas = [float(a) for a in args.alphas.split(",")] if args.alphas else list(DEFAULT_CALIBRATION_ALPHAS)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()] if args.domains else None
    prompts = load_prompt_set(args.prompts, args.split, domains)
    sampling = SamplingSettings(max_tokens=args.max_tokens, min_tokens=args.min_tokens, temperature=args.temperature)
    out = Path(args.out)
    doc = calibrate(args.anchors, scorers, out, alphas=alphas, prompts=prompts, chat=args.chat, samples=args.samples,
                    sampling=sampling, resamples=args.resamples, batch_size=args.batch_size, min_z=args.min_z)
    if not args.no_save:
        doc = save_calibration(open_set(args.anchors), doc)
        print(f"saved the calibration beside the set: {args.anchors} (version {doc['anchor_set']['version']})")
    (out / "calibration.json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {out / 'calibration.json'}")
    print(f"wrote {plot_calibration(doc, out / 'calibration.png')}")
    for attr, c in doc["curves"].items():
        fit = "  ".join(f"{a:g}->{f:.3f}" for a, f in zip(c["alphas"], c["fit"], strict=True))
        sig, noise = c["signal"], c["noise_share"]
        print(f"{attr:12s} {c['scorer']}: {fit}")
        share = {k: "-" if v is None else f"{v:.0%}" for k, v in noise.items()}
        print(f"{'':12s} alpha 0 -> 1 per prompt: {sig['change']:+.3f} (se {sig['se']:.3f}, z {sig['z']:.1f}); the "
              f"90% band takes {share['band_over_range']} of the range (per-prompt change: "
              f"{share['change_band_over_range']}; prompts' alpha-0 spread: {share['baseline_sd_over_range']}); "
              f"{c['unscorable']:.0%} of replies empty or unscorable")
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
    from lerpray.eval.plots import plot_weight_similarity

    json_path = similarity.save(args.out)
    for path in (json_path, plot_weight_similarity(similarity, json_path.parent / "weights_cosine.png")):
        print(f"wrote {path}")
    return 0


def _classifiers(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from lerpray.data.corpora import load_manifest
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

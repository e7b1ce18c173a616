"""`lerpray anchors build | inspect | verify`.

    lerpray anchors build --base MODEL --anchor sentiment.positive=PATH --anchor sentiment.negative=PATH \\
        [--high sentiment=positive] --out s3://bucket/sets/sentiment [--overwrite]
    lerpray anchors build ... --out s3://bucket/sets/sentiment --new-version [--extends s3://bucket/sets/sentiment@3]
    lerpray anchors list URI                  # a versioned set's versions: time, attributes, training run, aliases
    lerpray anchors alias set URI NAME VERSION | lerpray anchors alias show URI
    lerpray anchors inspect URI[@VERSION|@ALIAS] [--json]
    lerpray anchors verify URI          # exit 0 when every file matches its sha256, 1 with the problems
"""

from __future__ import annotations

import argparse
import sys


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser("anchors", help="build, list, alias, inspect and verify anchor sets (PEFT adapters "
                                   "+ manifest)")
    actions = parser.add_subparsers(dest="anchors_command", required=True, metavar="ACTION")

    build = actions.add_parser("build", help="publish PEFT LoRA adapter folders as an anchor set")
    build.add_argument("--base", required=True, help="base model the adapters were trained on: a local HF folder, "
                       "a hub id, or bundled:smollm2-135m-instruct")
    build.add_argument("--anchor", action="append", required=True, metavar="ATTR.POLE=PATH",
                       help="an anchor and its PEFT adapter folder; two poles per attribute; order = coefficient order")
    build.add_argument("--high", action="append", default=[], metavar="ATTR=POLE",
                       help="the pole active at alpha=1 (default: positive, formal, simple, humorous, polite, ...; "
                       "else the alphabetically first)")
    build.add_argument("--out", required=True, metavar="URI", help="s3://bucket/prefix or a local folder")
    build.add_argument("--overwrite", action="store_true", help="replace an existing set at --out (version + 1)")
    build.add_argument("--new-version", action="store_true", help="publish an immutable new version of a versioned "
                       "set at --out and move its `latest` alias to it")
    build.add_argument("--extends", metavar="URI", help="with --new-version: carry this set's anchors unchanged "
                       "(URI@VERSION or URI@ALIAS) before the new ones")
    build.set_defaults(func=_build)

    listing = actions.add_parser("list", help="a versioned set's versions with time, attributes, run and aliases")
    listing.add_argument("uri")
    listing.set_defaults(func=_list)

    alias = actions.add_parser("alias", help="point an alias (e.g. prod) at a version, or show the aliases")
    alias_actions = alias.add_subparsers(dest="alias_command", required=True, metavar="ACTION")
    alias_set = alias_actions.add_parser("set", help="point NAME at VERSION")
    alias_set.add_argument("uri")
    alias_set.add_argument("name")
    alias_set.add_argument("version", type=int)
    alias_set.set_defaults(func=_alias_set)
    alias_show = alias_actions.add_parser("show", help="every alias and the version it points at")
    alias_show.add_argument("uri")
    alias_show.set_defaults(func=_alias_show)

    inspect = actions.add_parser("inspect", help="show an anchor set's base model, anchors, poles and metrics")
    inspect.add_argument("uri")
    inspect.add_argument("--json", action="store_true", help="print the manifest JSON instead of a table")
    inspect.set_defaults(func=_inspect)

    verify = actions.add_parser("verify", help="check every file of an anchor set against its sha256")
    verify.add_argument("uri")
    verify.set_defaults(func=_verify)


def parse_pairs(values: list[str], flag: str) -> dict[str, str]:
    """["a=b", ...] -> {"a": "b"}; a clear error for a malformed or repeated name."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise ValueError(f"{flag} {value!r}: expected NAME=VALUE")
        if key in pairs:
            raise ValueError(f"{flag} {key!r} given twice")
        pairs[key] = rest
    return pairs


def _build(args: argparse.Namespace) -> int:
    from lerpray.anchors import AttributePoles, build_anchor_set
    from lerpray.anchors.format import model_identity
    from lerpray.hf_models import load_base_model

    adapters = parse_pairs(args.anchor, "--anchor")
    attributes = {}
    for attr, high in parse_pairs(args.high, "--high").items():
        poles = [name.partition(".")[2] for name in adapters if name.partition(".")[0] == attr]
        if high not in poles or len(poles) != 2:
            raise ValueError(f"--high {attr}={high}: attribute {attr!r} needs two --anchor poles including {high!r}, "
                             f"got {poles}")
        attributes[attr] = AttributePoles(high=high, low=next(p for p in poles if p != high))
    if args.extends and not args.new_version:
        raise ValueError("--extends needs --new-version (extending publishes a new version of a versioned set)")
    model, _ = load_base_model(args.base)
    identity = model_identity(model, args.base)
    del model
    if args.new_version:
        from lerpray.anchors import publish_version

        manifest = publish_version(identity, adapters, args.out, extends=args.extends, attributes=attributes)
    else:
        manifest = build_anchor_set(identity, adapters, args.out, overwrite=args.overwrite, attributes=attributes)
    print(f"published {len(manifest.anchors)} anchors to {args.out} (version {manifest.version})")
    print(format_table(manifest, args.out))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from lerpray.anchors import open_set, read_manifest
    from lerpray.anchors.calibration import CalibrationError, format_calibration, read_calibration_doc

    store = open_set(args.uri)
    manifest = read_manifest(store)
    if args.json:
        sys.stdout.write(manifest.to_json().decode())
    else:
        print(format_table(manifest, args.uri))
        try:
            print("\n" + format_calibration(read_calibration_doc(store)))
        except CalibrationError as err:  # shown, not fatal: the set itself is fine
            print(f"\ncalibration: unusable: {err}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from lerpray.anchors import open_set, read_manifest, verify_anchor_set

    problems = verify_anchor_set(args.uri)
    if problems:
        print(f"{args.uri}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    manifest = read_manifest(open_set(args.uri))
    files = sum(len(a.files) for a in manifest.anchors)
    print(f"OK {args.uri}: {len(manifest.anchors)} anchors, {files} files match their sha256")
    return 0


def _list(args: argparse.Namespace) -> int:
    from lerpray.anchors import list_versions, open_store

    versions = list_versions(open_store(args.uri))
    if not versions:
        print(f"{args.uri}: no versions (an unversioned set, or nothing there); see `lerpray anchors inspect`",
              file=sys.stderr)
        return 1
    rows = [("VERSION", "CREATED", "ATTRIBUTES", "ANCHORS", "RUN", "ALIASES")]
    for v in versions:
        m = v.manifest
        if m is None:
            rows.append((str(v.version), "-", "(incomplete publish)", "-", "-", ",".join(v.aliases) or "-"))
            continue
        run = (m.training or {}).get("run_id") or "-"
        rows.append((str(v.version), m.created_at.isoformat(timespec="seconds"), ",".join(m.attributes),
                     str(len(m.anchors)), str(run), ",".join(v.aliases) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows))
    return 0


def _alias_set(args: argparse.Namespace) -> int:
    from lerpray.anchors import open_store, set_alias

    set_alias(open_store(args.uri), args.name, args.version)
    print(f"{args.uri}@{args.name} -> version {args.version}")
    return 0


def _alias_show(args: argparse.Namespace) -> int:
    from lerpray.anchors import alias_targets, open_store

    for name, version in sorted(alias_targets(open_store(args.uri)).items()):
        print(f"{name}\t{version}")
    return 0


def format_table(manifest, uri: str) -> str:
    """A readable summary: header (set, base model, attributes) and one row per anchor in coefficient order."""
    base = manifest.base_model
    pin = ", ".join(p for p in (f"revision {base.revision}" if base.revision else "",
                                f"checksum {base.checksum[:12]}" if base.checksum else "") if p)
    lines = [
        f"anchor set {uri}  (format {manifest.format_version}, version {manifest.version}, "
        f"created {manifest.created_at.isoformat(timespec='seconds')})",
        f"base model {base.name}: {base.architecture}, hidden {base.hidden_size}, layers {base.num_layers}, "
        f"vocab {base.vocab_size}; {pin}",
        "attributes " + ", ".join(f"{a} (high={p.high}, low={p.low})" for a, p in manifest.attributes.items()),
        "",
    ]
    header = ("ANCHOR", "ATTRIBUTE", "POLE", "RANK", "ALPHA", "RSLORA", "TARGETS", "METRICS")
    rows = [header] + [
        (a.name, a.attribute, f"{a.pole} ({manifest.role(a)})", str(a.rank), f"{a.lora_alpha:g}",
         "yes" if a.use_rslora else "no", ",".join(a.target_modules),
         " ".join(f"{k}={_fmt(v)}" for k, v in a.metrics.items()) or "-")
        for a in manifest.anchors
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

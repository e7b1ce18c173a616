"""The `lerpray` command (also `python -m lerpray`).

Each area owns its subcommands in a small `commands` module exposing `add_parsers(subparsers)`; those modules import
their heavy dependencies (torch, Ray, ...) inside the handlers so that `lerpray --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Area command modules, in the order their subcommands appear in --help.
COMMAND_MODULES = (
    "lerpray.quickstart.commands",
    "lerpray.data.commands",
    "lerpray.train.commands",
    "lerpray.serve.commands",
    "lerpray.serve.generate_command",
    "lerpray.batch.commands",
    "lerpray.eval.commands",
    "lerpray.submit.commands",
    "lerpray.anchors.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lerpray",
        description="Continuous interpolation of LoRA anchors: train on Ray Train, serve any mix on Ray Serve.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency, not a not-yet-written area
                raise
            continue
        module.add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, PermissionError) as err:
        # User-facing errors (bad config, bad mix, bad anchor set) carry a message that says what to change.
        print(f"lerpray {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

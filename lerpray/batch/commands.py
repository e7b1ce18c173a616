"""`lerpray batch CONFIG [--overwrite] [--address ADDR] [--no-progress]`: offline generation on Ray Data.

Runs on the current Ray cluster (--address, else RAY_ADDRESS, else a cluster already running on this machine), or
starts a local one. Exit status: 0 complete output, 1 incomplete output (counts printed), 2 a bad config or input.
"""

from __future__ import annotations

import argparse
import sys


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser("batch", help="generate for every prompt x mix of a job YAML on Ray Data")
    parser.add_argument("config", help="batch job YAML (see jobs/configs/batch_local.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="replace what is in output.path")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a running "
                        "local cluster, else start one)")
    parser.add_argument("--no-progress", action="store_true", help="do not draw Ray Data's progress bars")
    parser.set_defaults(func=_batch)


def _batch(args: argparse.Namespace) -> int:
    from lerpray.batch.config import load_batch_config
    from lerpray.ray_cluster import connect_ray

    config = load_batch_config(args.config)  # before Ray: a bad config fails in a second
    connect_ray(args.address)
    return run_and_report(config, overwrite=args.overwrite, progress=not args.no_progress)


def run_and_report(config, *, overwrite: bool = False, progress: bool = True) -> int:
    """Run the job, print the counts; 0 when the output is complete. Shared by the CLI and jobs/batch_generate.py.

    `overwrite` / `progress=False` override the config's output.overwrite / progress (command-line flags).
    """
    from lerpray.batch.pipeline import run_batch

    updates: dict = {"output": config.output.model_copy(update={"overwrite": True})} if overwrite else {}
    if not progress:
        updates["progress"] = False
    summary = run_batch(config.model_copy(update=updates))
    print(f"{summary.output}: {summary.written_rows} rows written of {summary.expected_rows} expected "
          f"({summary.input_rows} prompts x {summary.mixes_per_row} mixes) in {summary.seconds:.1f} s; "
          f"{summary.completion_tokens:,} tokens generated ({summary.tokens_per_s:,.1f} tok/s)")
    if summary.complete:
        return 0
    print(f"lerpray batch: incomplete output: {summary.missing} missing, {summary.duplicates} duplicated, "
          f"{summary.unexpected} unexpected rows", file=sys.stderr)
    return 1

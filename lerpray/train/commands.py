"""`lerpray train CONFIG [--overwrite] [--run-id ID] [--address ADDR]`.

Runs on the current Ray cluster (--address, else RAY_ADDRESS, else a cluster already running on this machine), or
starts a local one. Exit status: 0 published, 1 an anchor failed (nothing published), 2 a bad config or output.
"""

from __future__ import annotations

import argparse
import sys


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train every anchor of a job YAML on Ray Train and publish the set")
    parser.add_argument("config", help="training job YAML (see jobs/configs/train_local.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing set at `output` (version + 1)")
    parser.add_argument("--run-id", default=None, help="names the Ray runs; pass an earlier run's id to resume it "
                        "from its checkpoints (default: the config's run_id, else a new one)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a running "
                        "local cluster, else start one)")
    parser.add_argument("--no-progress", action="store_true", help="do not draw per-anchor progress")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from lerpray.ray_cluster import connect_ray
    from lerpray.train.config import load_train_config

    config = load_train_config(args.config)  # before Ray: a bad config fails in a second
    connect_ray(args.address)
    return run_training(config, overwrite=args.overwrite, run_id=args.run_id, show_progress=not args.no_progress)


def run_training(config, *, overwrite: bool, run_id: str | None, show_progress: bool = True) -> int:
    """Train + publish, print a summary; shared by the CLI and jobs/train_anchors.py."""
    from lerpray.train.driver import TrainingFailed, train_anchors
    from lerpray.train.progress import describe

    try:
        outcome = train_anchors(config, overwrite=overwrite, run_id=run_id, show_progress=show_progress)
    except TrainingFailed as err:
        print(f"lerpray train: {err}", file=sys.stderr)
        return 1
    print(f"run {outcome.run_id}: published {len(outcome.metrics)} anchors to {config.output} "
          f"(version {outcome.manifest.version})")
    for name, metrics in outcome.metrics.items():
        print(f"  {name}: {metrics.get('step')} steps, {describe(metrics)}")
    return 0

"""Train every anchor of a job YAML on Ray Train and publish the anchor set (the `lerpray train` job as a script).

Submit to a running Ray cluster (lerpray installed on its nodes; --working-dir ships this repo and the YAML):
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/train_anchors.py jobs/configs/train_gpu_s3.yaml [--overwrite] [--run-id ID]

As a KubeRay RayJob (spec excerpt; the image has lerpray installed, the config is baked in or mounted):
    apiVersion: ray.io/v1
    kind: RayJob
    spec:
      entrypoint: python jobs/train_anchors.py jobs/configs/train_gpu_s3.yaml
      shutdownAfterJobFinishes: true
      rayClusterSpec: {...}            # head + GPU worker groups, as in cluster/

Locally, without a cluster (starts a local Ray instance):
    python jobs/train_anchors.py jobs/configs/train_local.yaml

Relaunching with the same run id (the config's `run_id` or --run-id) resumes each anchor from its last checkpoint.
Exit status: 0 published, 1 an anchor failed (nothing published), 2 a bad config or an existing set.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="training job YAML")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing set (published as version + 1)")
    parser.add_argument("--run-id", default=None, help="resume the Ray runs of this id (default: the config's)")
    args = parser.parse_args(argv)

    from lerpray.ray_cluster import connect_ray
    from lerpray.train.commands import run_training
    from lerpray.train.config import ConfigError, load_train_config

    try:
        config = load_train_config(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    connect_ray(None)  # inside `ray job submit`, RAY_ADDRESS points at the cluster
    try:
        return run_training(config, overwrite=args.overwrite, run_id=args.run_id)
    except ValueError as err:  # an existing set at the output, bad data, ...
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Batch generation on Ray Data: every prompt x mix of a job YAML through a pool of engine actors, to Parquet/JSONL.

Locally (starts a local Ray cluster unless one is running; the same as `lerpray batch CONFIG`):
    python jobs/batch_generate.py jobs/configs/batch_local.yaml [--overwrite]

On a Ray cluster (the driver runs on the head node; prompts, anchors and output on S3 or shared storage):
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/batch_generate.py jobs/configs/batch_gpu_s3.yaml
    lerpray submit batch jobs/configs/batch_gpu_s3.yaml --address http://HEAD:8265 --follow

As a KubeRay RayJob (image with lerpray installed; anchors, prompts and output on S3):
    apiVersion: ray.io/v1
    kind: RayJob
    metadata: {name: lerpray-batch}
    spec:
      entrypoint: python jobs/batch_generate.py jobs/configs/batch_gpu_s3.yaml
      runtimeEnvYAML: |
        working_dir: https://example.com/lerpray-repo.zip    # or bake jobs/ and the config into the image
      shutdownAfterJobFinishes: true
      rayClusterSpec: ...                                   # see cluster/kuberay/raycluster.yaml (GPU workers)

Steps: read and validate the config -> join the cluster -> plan (read prompts, check every mix) -> generate on
the actor pool -> write -> read back and check one row per prompt x mix. Exit status: 0 complete, 1 incomplete
output, 2 a bad config or input.
"""

from __future__ import annotations

import argparse
import sys

from lerpray.batch.commands import run_and_report
from lerpray.batch.config import BatchConfigError, load_batch_config
from lerpray.batch.plan import BatchInputError
from lerpray.ray_cluster import connect_ray


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="batch job YAML (see jobs/configs/batch_local.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="replace what is in output.path")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (plain logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_batch_config(args.config)
        connect_ray(None)  # inside `ray job submit`: RAY_ADDRESS points at the cluster
        return run_and_report(config, overwrite=args.overwrite, progress=not args.no_progress)
    except (BatchConfigError, BatchInputError) as err:
        print(f"batch_generate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Sweep an anchor set's mixes over a prompt set: every generation scored, perplexity per mix, plots and a report.

Locally (in this process; the same as `lerpray eval sweep CONFIG`):
    python jobs/eval_sweep.py jobs/configs/eval_sweep.yaml --out results/sweep

On a Ray cluster (the sweep runs as one Ray task; --num-gpus puts it on a GPU node, and --upload copies the
output folder to an object store, since the task's node is not the machine you submit from):
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/eval_sweep.py jobs/configs/eval_sweep.yaml --num-gpus 1 --upload s3://bucket/sweeps/run1
    lerpray submit eval jobs/configs/eval_sweep.yaml -- --num-gpus 1 --upload s3://bucket/sweeps/run1

As a KubeRay RayJob (image with lerpray installed; anchors and outputs on S3):
    apiVersion: ray.io/v1
    kind: RayJob
    metadata: {name: lerpray-eval-sweep}
    spec:
      entrypoint: python jobs/eval_sweep.py jobs/configs/eval_sweep.yaml --num-gpus 1 --upload s3://bucket/sweeps/run1
      runtimeEnvYAML: |
        working_dir: https://example.com/lerpray-repo.zip    # or bake jobs/ and the config into the image
      shutdownAfterJobFinishes: true
      rayClusterSpec: ...                                   # see cluster/kuberay/raycluster.yaml

Steps: read config -> (optionally hop onto a Ray worker) -> run_sweep (grid, generation, scores, perplexity,
plots, report) -> optionally upload the output folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lerpray.eval.config import SweepConfig, load_sweep_config
from lerpray.eval.sweep import run_sweep


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="sweep YAML (see jobs/configs/eval_sweep.yaml)")
    parser.add_argument("--out", help="output folder (overrides the config's `out`)")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="run the sweep as a Ray task with these GPUs")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs of that Ray task (with --num-gpus)")
    parser.add_argument("--upload", metavar="URI", help="copy the output folder to s3://bucket/prefix or a folder")
    return parser.parse_args(argv)


def upload(folder: Path, uri: str) -> list[str]:
    """Copy every file under `folder` to the store at `uri` (lerpray.anchors.open_store: S3 or a local folder)."""
    from lerpray.anchors import open_store

    store = open_store(uri)
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = path.relative_to(folder).as_posix()
        store.write_bytes(key, path.read_bytes())
        keys.append(key)
    return keys


def sweep(config: SweepConfig, upload_uri: str | None) -> str:
    """The whole job on whatever node runs it; returns the report's path (or its URI after an upload)."""
    outputs = run_sweep(config)
    if upload_uri is None:
        return str(outputs.report)
    upload(outputs.out, upload_uri)
    return f"{upload_uri.rstrip('/')}/{outputs.report.name}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_sweep_config(args.config)
    if args.out:
        config = SweepConfig.model_validate({**config.model_dump(), "out": args.out})
    if args.num_gpus > 0:
        import ray

        if config.device == "cpu":
            print("note: --num-gpus given but the config says device: cpu; set device: cuda to use the GPU")

        ray.init(address="auto")
        remote = ray.remote(num_gpus=args.num_gpus, num_cpus=args.num_cpus)(sweep)
        report = ray.get(remote.remote(config, args.upload))
    else:
        report = sweep(config, args.upload)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Batch generation on Ray Data (every prompt x mix of a job YAML through a pool of engine actors, to Parquet/JSONL):
`lerpray batch` as a script.

Cluster jobs run the installed package instead (`python -m lerpray batch CONFIG`, which is what `lerpray submit
batch` sends); this file is for a checkout without lerpray on PATH:
    python jobs/batch_generate.py jobs/configs/batch_local.yaml [--overwrite]
    lerpray submit batch jobs/configs/batch_gpu_s3.yaml --address http://HEAD:8265 --follow

As a KubeRay RayJob (image with lerpray installed; anchors, prompts and output on S3):
    apiVersion: ray.io/v1
    kind: RayJob
    metadata: {name: lerpray-batch}
    spec:
      entrypoint: python -m lerpray batch /configs/batch_gpu_s3.yaml
      shutdownAfterJobFinishes: true
      rayClusterSpec: ...                                   # see cluster/kuberay/raycluster.yaml (GPU workers)

Exit status: 0 complete, 1 incomplete output, 2 a bad config or input.
"""

import sys

from lerpray.cli import main

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))

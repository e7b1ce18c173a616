"""Sweep an anchor set's mixes over a prompt set (every generation scored, perplexity per mix, plots and a report):
`lerpray eval sweep` as a script.

Cluster jobs run the installed package instead (`python -m lerpray eval sweep CONFIG`, which is what `lerpray
submit eval` sends); --num-gpus runs the sweep as a Ray task on a GPU node and --upload copies the output folder to
an object store, since that node is not the machine you submit from:
    python jobs/eval_sweep.py jobs/configs/eval_sweep.yaml --out results/sweep
    lerpray submit eval jobs/configs/eval_sweep.yaml --address http://HEAD:8265 -- --num-gpus 1 \\
        --upload s3://bucket/sweeps/run1

As a KubeRay RayJob (image with lerpray installed; anchors and outputs on S3):
    apiVersion: ray.io/v1
    kind: RayJob
    metadata: {name: lerpray-eval-sweep}
    spec:
      entrypoint: python -m lerpray eval sweep /configs/eval_sweep.yaml --num-gpus 1 --upload s3://bucket/sweeps/run1
      shutdownAfterJobFinishes: true
      rayClusterSpec: ...                                   # see cluster/kuberay/raycluster.yaml
"""

import sys

from lerpray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "sweep", *sys.argv[1:]]))

"""Train every anchor of a job YAML on Ray Train and publish the anchor set: `lerpray train` as a script.

Cluster jobs run the installed package instead (`python -m lerpray train CONFIG`, which is what `lerpray submit
train` sends); this file is for a checkout without lerpray on PATH:
    python jobs/train_anchors.py jobs/configs/train_local.yaml [--overwrite] [--run-id ID]

As a KubeRay RayJob (spec excerpt; the image has lerpray installed, the config is baked in or mounted):
    apiVersion: ray.io/v1
    kind: RayJob
    spec:
      entrypoint: python -m lerpray train /configs/train_gpu_s3.yaml
      shutdownAfterJobFinishes: true
      rayClusterSpec: {...}            # head + GPU worker groups, as in cluster/

Relaunching with the same run id (the config's `run_id` or --run-id) resumes each anchor from its last checkpoint.
Exit status: 0 published, 1 an anchor failed (nothing published), 2 a bad config or an existing set.
"""

import sys

from lerpray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

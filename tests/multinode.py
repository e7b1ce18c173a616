"""A real multi-node Ray cluster on this machine for the multi-node tests: a head with no CPUs (it schedules
nothing) and worker nodes, each its own raylet with its own resources (`ray.cluster_utils.Cluster`).

Imported as `multinode` (pytest puts tests/ on sys.path). Nodes inherit the environment at the time they start,
so point AWS_* at the moto server first. Only the cluster's own processes are stopped (Cluster.shutdown).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from serve_app import free_port, load_test_module, wait_for

__all__ = ["actor_node", "free_port", "load_test_module", "node_of_pid", "ray_cluster", "recording_engine",
           "replica_nodes", "upload_folder", "wait_for"]


@contextmanager
def ray_cluster(workers: list[dict], env: dict[str, str] | None = None,
                dashboard_port: int | None = None) -> Iterator[tuple]:
    """Head (num_cpus=0) + one worker node per `workers` entry (add_node kwargs, e.g. {"num_cpus": 1, "resources":
    {"node_a": 1}}); connects the driver and yields (cluster, [worker nodes]). With `dashboard_port` the head runs
    the dashboard there, and with it the Jobs API (http://127.0.0.1:PORT)."""
    import ray
    from ray.cluster_utils import Cluster

    settings = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    if dashboard_port is None:
        # As lerpray.ray_cluster.local_ray: without a dashboard of its own, Ray Train's placement-group cleaner
        # could ask another cluster's dashboard on this machine whether our run's controller lives, hear "no", and
        # remove a live run's placement group. A closed port makes it keep waiting instead.
        settings["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{free_port()}"
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    # The agent that runs submitted jobs gets a free port too: its default (52365) may be another cluster's.
    dashboard = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
                 "dashboard_agent_listen_port": free_port()}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            **(dashboard if dashboard_port else {})})
    try:
        nodes = [cluster.add_node(**spec) for spec in workers]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def node_of(marker_dir: str) -> str:
    """Record this process's node id in `marker_dir` (test bookkeeping on one machine, not a data path)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    path = os.path.join(marker_dir, f"{node}-{os.getpid()}")
    with open(path, "w") as f:
        f.write(node)
    return node


def recording_engine(marker_dir: str, **engine_kwargs):
    """The batch pipeline's real engine, after noting the node it loads on."""
    from lerpray.batch.pipeline import load_engine

    node_of(marker_dir)
    return load_engine(**engine_kwargs)


def upload_folder(s3_client, folder, bucket: str, prefix: str, last: str = "lerpray-manifest.json") -> str:
    """Copy a local folder to s3://bucket/prefix (the file named `last` last, as a publish does); return the URI."""
    from pathlib import Path

    files = sorted((p for p in Path(folder).rglob("*") if p.is_file()), key=lambda p: p.name == last)
    for path in files:
        s3_client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}",
                             Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"


def replica_nodes(app: str, deployment: str = "LerpServer") -> list[str]:
    """The node id of each RUNNING replica of the deployment."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    replicas = details["applications"][app]["deployments"][deployment]["replicas"]
    return [r["node_id"] for r in replicas if r["state"] == "RUNNING"]


def actor_node(handle) -> str:
    """The node id an actor was placed on, from the GCS actor table (no dashboard needed)."""
    import ray

    ray.get(handle.__ray_ready__.remote())  # placed and started
    return ray._private.state.actors(handle._actor_id.hex())["Address"]["NodeID"]  # noqa: SLF001 - test helper


def node_of_pid(nodes: list, pid: int):
    """The Cluster node whose raylet started process `pid` (a Ray worker is a child of its node's raylet)."""
    import psutil

    ancestors = {p.pid for p in psutil.Process(pid).parents()}
    for node in nodes:
        raylets = node.all_processes.get("raylet", [])
        if any(info.process.pid in ancestors for info in raylets):
            return node
    return None

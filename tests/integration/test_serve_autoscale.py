"""Autoscaling on a real Ray Serve: under sustained concurrent load the app goes from 1 to 2 replicas (half a CPU
each), and back to 1 once the load stops.

The deployment options are cluster/serve.yaml's, with test-sized replica counts, thresholds and delays. Waits are
bounded by polling serve.status(); nothing here asserts on timing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from ray import serve

from lerpray.testing import tiny_anchor_set

pytestmark = pytest.mark.integration

APP, DEPLOYMENT = "autoscale", "LerpServer"
CONFIG = Path(__file__).resolve().parents[2] / "cluster" / "serve.yaml"
TEST_AUTOSCALING = {
    "min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
    "upscale_delay_s": 0.5, "downscale_delay_s": 2.0, "metrics_interval_s": 0.5, "look_back_period_s": 1.0,
}
CLIENTS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deployment_options() -> dict:
    """cluster/serve.yaml's options for the deployment, with test-sized autoscaling."""
    (options,) = yaml.safe_load(CONFIG.read_text())["applications"][0]["deployments"]
    options = {k: v for k, v in options.items() if k not in ("name", "ray_actor_options")}
    options["autoscaling_config"] = {**options["autoscaling_config"], **TEST_AUTOSCALING}
    return options


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    from lerpray.serve import ServeArgs, make_app

    anchors = str(tiny_anchor_set(tmp_path_factory.mktemp("serve-autoscale")))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = ServeArgs(anchors=anchors, num_cpus=0.5, max_batch_size=4)
        serve.run(make_app(args, **deployment_options()), name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def replicas() -> dict[str, int]:
    """Replica counts by state ("RUNNING", "STARTING", ...)."""
    status = serve.status().applications[APP].deployments[DEPLOYMENT]
    return {str(getattr(state, "value", state)): n for state, n in status.replica_states.items()}


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


class Load:
    """CLIENTS threads sending completions back to back until stopped."""

    def __init__(self, base_url: str) -> None:
        self.base_url, self.stop, self.statuses = base_url, threading.Event(), []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _client(self, i: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self.stop.is_set():
                body = {"prompt": f"client {i}", "max_tokens": 48, "interpolation": {"alpha": {"sentiment": i / 6}}}
                self.statuses.append(client.post("/v1/completions", json=body).status_code)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def test_scales_up_under_load_and_back_down(base_url):
    assert replicas().get("RUNNING") == 1
    with Load(base_url) as load:
        scaled_up = wait_for(lambda: replicas().get("RUNNING", 0) == 2, timeout_s=90)
        served_while_scaled = len(load.statuses)
    assert scaled_up, f"never reached 2 running replicas under load: {replicas()}"
    assert served_while_scaled > 0 and set(load.statuses) == {200}
    scaled_down = wait_for(lambda: replicas() == {"RUNNING": 1}, timeout_s=90)
    assert scaled_down, f"did not scale back to 1 replica after the load stopped: {replicas()}"
    assert httpx.get(f"{base_url}/healthz").status_code == 200

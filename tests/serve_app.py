"""A lerpray Serve app on a fresh local Ray (127.0.0.1, a free port), for the integration tests that talk HTTP to it.

Imported as `serve_app` (pytest puts tests/, the folder of the root conftest.py, on sys.path).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(args, env_vars: dict[str, str] | None = None, **deployment_options) -> Iterator[str]:
    """Start Ray (2 CPUs, `env_vars` in every worker) and Serve, deploy `args` (a ServeArgs) at "/" (with
    `deployment_options`, e.g. num_replicas, as make_app takes them), yield the base URL; shut both down afterwards."""
    import ray
    from ray import serve

    from lerpray.serve import make_app

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env_vars or {}})
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(make_app(args, **deployment_options), name="lerpray", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def load_test_module():
    """benchmarks/load_test.py (benchmarks/ is not a package): the load client with retries and per-attempt records."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "load_test.py"
    spec = importlib.util.spec_from_file_location("lerpray_load_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def wait_for(condition, timeout_s: float, every_s: float = 0.3):
    """condition()'s first truthy value within `timeout_s`, else None."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every_s)
    return None

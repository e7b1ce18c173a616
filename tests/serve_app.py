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
def running_app(args, env_vars: dict[str, str] | None = None) -> Iterator[str]:
    """Start Ray (2 CPUs, `env_vars` in every worker) and Serve, deploy `args` (a ServeArgs) at "/", yield the base
    URL; shut both down afterwards."""
    import ray
    from ray import serve

    from lerpray.serve import make_app

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env_vars or {}})
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(make_app(args), name="lerpray", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()

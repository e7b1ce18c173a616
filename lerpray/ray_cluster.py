"""Where lerpray's Ray work runs: the cluster a command joins (`connect_ray`), or a private single-machine one
(`local_ray`) in which the quickstart, the tests and the benchmarks run their Ray Train and Ray Serve work without
joining (or disturbing) another cluster on the same machine. Ray is imported inside, on use."""

from __future__ import annotations

__all__ = ["connect_ray", "local_ray"]


def connect_ray(address: str | None) -> None:
    """Join the given / current cluster (RAY_ADDRESS, else one running on this machine), or start a local one."""
    import os

    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
        return
    try:
        ray.init(address="auto")
    except ConnectionError:
        ray.init()


class local_ray:  # noqa: N801 - used like a function: `with local_ray(num_cpus=2): ...`
    """A private local Ray cluster (no dashboard) for the quickstart, tests and benchmarks; shut down after.

    Sets RAY_AUTH_MODE=disabled and RAY_USAGE_STATS_ENABLED=0, plus `env`, before the cluster starts (its
    processes inherit them) and restores the environment afterwards. RAY_API_SERVER_ADDRESS points at a closed
    local port: Ray Train's PlacementGroupCleaner asks the state API whether its controller is alive, and without
    a dashboard of its own it may find another Ray cluster's dashboard on a shared machine, be told "no such
    actor", and remove a live run's placement group (killing its workers). Unreachable, it just keeps waiting.
    """

    def __init__(self, num_cpus: int = 2, env: dict[str, str] | None = None, **init_kwargs):
        self.num_cpus, self.env, self.init_kwargs = num_cpus, dict(env or {}), init_kwargs
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> local_ray:
        import os
        import socket

        import ray

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        settings = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{closed_port}", **self.env}
        self._saved = {key: os.environ.get(key) for key in settings}
        os.environ.update(settings)
        try:
            ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False, **self.init_kwargs)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        import ray

        try:
            ray.shutdown()
        finally:
            self._restore()

    def _restore(self) -> None:
        import os

        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

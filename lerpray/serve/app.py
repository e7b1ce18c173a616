"""The Serve application builder: `import_path: lerpray.serve.app:build_app` in a Serve config YAML.

    serve run cluster/serve.yaml                  # or: lerpray serve --anchors URI [--config cluster/serve.yaml]
    serve run lerpray.serve.app:build_app anchors=/path/to/anchor-set

`args` are validated by `ServeArgs` (lerpray/serve/config.py) when the app is built, so a typo in the YAML fails the
deploy with a message naming the field instead of failing every replica. Autoscaling, max_ongoing_requests and
max_queued_requests belong in the YAML's `deployments:` block (see cluster/serve.yaml).

With `multiplex:` in the args the app is two deployments: LerpRouter (the HTTP ingress) in front of LerpSets (the set
replicas, Ray Serve model multiplexing; see cluster/serve-multiplexed.yaml); without it, one: LerpServer.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from lerpray.serve.config import ServeArgs
from lerpray.serve.deployment import EngineFactory, LerpServer
from lerpray.serve.multiplexed import LerpSets
from lerpray.serve.router import LerpRouter

__all__ = ["build_app", "make_app"]

ROUTER_CPUS = 0.1  # the ingress only reads bodies and relays answers; the YAML's deployments block may change it


def build_app(args: dict[str, Any]) -> Application:
    """Serve's app-builder entry point: `args` is the YAML's `args:` mapping (or `key=value` pairs of serve run)."""
    return make_app(ServeArgs.model_validate(args))


def make_app(args: ServeArgs, *, engine_factory: EngineFactory | None = None, **deployment_options: Any) -> Application:
    """Bind the deployment (the set replicas' when multiplexed); `deployment_options` (e.g. autoscaling_config) are
    what a Serve YAML's `deployments:` block would set, for callers that deploy from Python (tests, benchmarks)."""
    options = {"ray_actor_options": args.ray_actor_options(), **deployment_options}
    if args.multiplex is not None:
        sets = LerpSets.options(**options).bind(args.model_dump(mode="json"), engine_factory)
        return LerpRouter.options(ray_actor_options={"num_cpus": ROUTER_CPUS}).bind(args.model_dump(mode="json"), sets)
    return LerpServer.options(**options).bind(args.model_dump(mode="json"), engine_factory)

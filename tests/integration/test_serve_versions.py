"""Anchor-set versions and several sets in one real Serve app (127.0.0.1, a free port, one replica, tiny Llama).

The app is deployed the way `serve deploy` deploys cluster/serve.yaml (a declarative config: import path, args,
deployments); its `user_config` names the anchor-set version, so changing only `user_config` reconfigures the
running replica in place (Serve's lightweight update, `LerpServer.reconfigure`).
plus a second set under its own model id (on another base model: its own engine) and a third on the main set's
base model (one engine with the main set: lerpray.serve.shared_sets). Under a steady load the app rolls from version 1 to version 2: zero
failed requests, every response names its version, and after the first answer from version 2 none comes from 1.
A change to an alias that names no version is refused and the replica keeps serving what it had.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
from ray import serve
from serve_app import free_port, load_test_module, wait_for

pytestmark = pytest.mark.integration

VERSION_HEADER = "x-lerpray-anchor-version"
OTHER = "lerpray-other"
SAME = "lerpray-same"  # a set on the main set's base model: shares its engine


load_test = load_test_module()


def versioned_set(tmp: Path) -> str:
    """Versions 1 and 2 (different random adapters on one tiny base) of a set at tmp/set; alias prod -> 1."""
    from lerpray.anchors import open_store, publish_version, read_manifest, set_alias
    from lerpray.testing import TINY_ANCHORS, random_adapter, tiny_anchor_set, tiny_llama

    legacy = tiny_anchor_set(tmp / "v1")
    base = read_manifest(open_store(legacy)).base_model
    root = tmp / "set"
    publish_version(base, {name: tmp / "v1" / "adapters" / name for name in TINY_ANCHORS}, root)
    model = tiny_llama(seed=0)
    publish_version(base, {name: random_adapter(model, tmp / "v2" / name, seed=50 + i)
                           for i, name in enumerate(TINY_ANCHORS)}, root)
    set_alias(open_store(root), "prod", 1)
    return str(root)


def same_base_set(tmp: Path) -> str:
    """A set on the base model of `versioned_set`'s versions (other random adapters), at tmp/same."""
    from lerpray.anchors import build_anchor_set, open_store, read_manifest
    from lerpray.testing import TINY_ANCHORS, random_adapter, tiny_llama

    base, model = read_manifest(open_store(tmp / "v1" / "anchors")).base_model, tiny_llama(seed=0)
    adapters = {name: random_adapter(model, tmp / "same-adapters" / name, seed=70 + i)
                for i, name in enumerate(TINY_ANCHORS)}  # fmt: skip
    build_anchor_set(base, adapters, tmp / "same", overwrite=True)
    return str(tmp / "same")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from lerpray.ray_cluster import local_ray
    from lerpray.testing import tiny_anchor_set

    tmp = tmp_path_factory.mktemp("serve-versions")
    root = versioned_set(tmp)
    other = str(tiny_anchor_set(tmp / "other", seed=2))
    args = {"anchors": f"{root}@prod", "sets": {OTHER: other, SAME: same_base_set(tmp)}, "num_cpus": 0.5, "torch_threads": 1,
            "max_batch_size": 4, "max_tokens_cap": 32, "default_max_tokens": 8,
            "presets": {"lerpray-upbeat": {"alpha": {"sentiment": 1}}}}
    name = f"versions-{uuid.uuid4().hex[:6]}"

    def deploy(user_config: dict) -> None:
        """What `serve deploy` does with the YAML: only `user_config` differs between calls."""
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        config = {"applications": [{
            "name": name, "route_prefix": "/", "import_path": "lerpray.serve.app:build_app", "args": args,
            "deployments": [{"name": "LerpServer", "num_replicas": 1, "user_config": user_config,
                             "ray_actor_options": {"num_cpus": 0.5}}],
        }]}
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
        want = {**user_config}
        assert wait_for(lambda: _running(name, want), 180), serve.status().applications.get(name)

    metrics_port = free_port()
    with local_ray(num_cpus=2, log_to_driver=False, _metrics_export_port=metrics_port,
                   env={"RAY_metrics_report_interval_ms": "1000"}):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            deploy({"anchors": f"{root}@prod"})
            yield {"url": f"http://127.0.0.1:{port}", "root": root, "deploy": deploy, "name": name,
                   "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
        finally:
            serve.shutdown()


def _running(name: str, user_config: dict) -> bool:
    app = serve.status().applications.get(name)
    if app is None or str(getattr(app.status, "value", app.status)) != "RUNNING":
        return False
    details = serve.context._get_global_client().get_serve_details()
    deployment = details["applications"][name]["deployments"]["LerpServer"]
    return deployment["deployment_config"].get("user_config") == user_config and deployment["status"] == "HEALTHY"


def fingerprints(url: str) -> dict[str, str]:
    return {card["id"]: card["fingerprint"] for card in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}


def complete(url: str, model: str | None = None) -> httpx.Response:
    body = {"prompt": "Hello", "max_tokens": 4, "temperature": 0.0, **({"model": model} if model else {})}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


def test_models_lists_every_set_and_each_model_selects_its_set(app):
    cards = fingerprints(app["url"])
    assert list(cards) == ["lerpray", "lerpray-upbeat", OTHER, SAME]
    assert cards["lerpray"].startswith("v1-") and cards["lerpray-upbeat"] == cards["lerpray"]
    assert len({cards["lerpray"], cards[OTHER], cards[SAME]}) == 3
    for model, expected in [(None, "lerpray"), ("lerpray-upbeat", "lerpray"), (OTHER, OTHER),
                            (f"{OTHER}:sentiment=0.9", OTHER), ("lerpray:sentiment=0.1", "lerpray"), (SAME, SAME),
                            (f"{SAME}:formality=0.2", SAME)]:  # fmt: skip
        response = complete(app["url"], model)
        assert response.status_code == 200, response.text
        assert response.headers[VERSION_HEADER] == cards[expected] == response.json()["system_fingerprint"]
    unknown = complete(app["url"], "nope")
    assert unknown.status_code == 404
    message = unknown.json()["error"]["message"]
    assert all(repr(m) in message for m in ("lerpray", "lerpray-upbeat", OTHER, SAME)), message


def test_roll_to_a_new_version_under_load_fails_nothing(app):
    url = app["url"]
    same = fingerprints(url)[SAME]  # shares the main set's engine: reloaded with it, its version unchanged
    replicas = load_test.replica_pids(app["name"])
    assert len(replicas) == 1
    run = load_test.LoadRun(url, clients=2, seconds=180, max_requests=100_000, max_tokens=8, seed=3)
    run.start()
    try:
        assert wait_for(lambda: sum(r.status == 200 for r in run.records) >= 6, 60), "no traffic before the roll"
        rolled_at = time.monotonic()
        app["deploy"]({"anchors": f"{app['root']}@2"})  # returns once the app is RUNNING again
        v2 = wait_for(lambda: (f := fingerprints(url)["lerpray"]).startswith("v2-") and f, 120)
        assert v2, f"still serving {fingerprints(url)}"
        assert wait_for(lambda: sum(r.version == v2 for r in run.records) >= 6, 60), "no answers from version 2"
    finally:
        run.stop()
        run.join()
    records = sorted(run.records, key=lambda r: r.end)
    failed = [r for r in records if r.status != 200 or r.error is not None]
    versions = [r.version for r in records]
    first_v2 = versions.index(v2)
    print(f"\nFIGURES roll: requests={len(records)} failed={len(failed)} before={first_v2} "
          f"after={len(records) - first_v2} roll_s={time.monotonic() - rolled_at:.1f}")
    assert failed == [], sorted({f"{r.status}:{r.error}" for r in failed})
    assert load_test.replica_pids(app["name"]) == replicas, "the replica was restarted, not reconfigured in place"
    assert set(versions[:first_v2]) | set(versions[first_v2:]) <= {versions[0], v2} and versions[0].startswith("v1-")
    # requests that started after the swap was visible all came from version 2
    seen_v2 = records[first_v2].end
    assert all(r.version == v2 for r in records if r.start > seen_v2)
    response = complete(url, SAME)
    assert response.status_code == 200 and response.headers[VERSION_HEADER] == same, response.text


def test_an_alias_to_no_version_is_refused_and_the_old_version_keeps_serving(app):
    before = fingerprints(app["url"])["lerpray"]
    app["deploy"]({"anchors": f"{app['root']}@missing"})
    health = wait_for(lambda: (h := httpx.get(f"{app['url']}/healthz", timeout=30).json())["reload_error"] and h, 60)
    assert health and "no alias 'missing'" in health["reload_error"], health
    response = complete(app["url"])
    assert response.status_code == 200 and response.headers[VERSION_HEADER] == before



def test_prometheus_metrics_are_exported(app):
    """The replica's metrics (lerpray/serve/metrics.py) reach the node's Prometheus endpoint, with Ray's prefix."""
    for _ in range(3):
        assert complete(app["url"]).status_code == 200
    assert complete(app["url"], "nope").status_code == 404
    wanted = ("ray_lerpray_requests_total", "ray_lerpray_errors_total", "ray_lerpray_tokens_generated_total",
              "ray_lerpray_batch_size_bucket", "ray_lerpray_queue_time_s_bucket",
              "ray_lerpray_time_to_first_token_s_bucket")

    def scraped() -> str | None:
        text = httpx.get(app["metrics"], timeout=10).text
        return text if all(name in text for name in wanted) else None

    text = wait_for(scraped, 60, every_s=1.0)
    assert text, f"missing: {[n for n in wanted if n not in httpx.get(app['metrics'], timeout=10).text]}"
    errors = [line for line in text.splitlines() if line.startswith("ray_lerpray_errors_total{")]
    assert any('status="404"' in line and 'endpoint="completions"' in line for line in errors), errors


def test_eval_sweep_through_the_real_serve_app(app, tmp_path):
    """`lerpray eval sweep` with `server:`: every mix of an alpha grid generated by the Serve app, scored, plotted."""
    import pandas as pd

    from lerpray.cli import main

    config = tmp_path / "sweep.yaml"
    config.write_text(f"""
out: {tmp_path / "out"}
server: {app["url"]}
server_model: lerpray
grids: [{{kind: alpha, attributes: [sentiment], alphas: [0.0, 0.5, 1.0]}}]
prompts: {{limit: 2, samples: 1}}
sampling: {{max_tokens: 6, temperature: 0.0}}
scorers: [fkgl]
""")
    assert main(["eval", "sweep", str(config)]) == 0
    table = pd.read_csv(tmp_path / "out" / "generations.csv")
    assert len(table) == 3 * 2 and table["finish_reason"].isin(["length", "stop"]).all()
    assert table["mix_id"].nunique() == 3 and "score.fkgl" in table  # NaN where the random model wrote no words
    assert (tmp_path / "out" / "scores_vs_alpha.png").stat().st_size > 0

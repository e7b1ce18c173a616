"""Reliability of serving under real load and real faults: rows of docs/reliability.md.

One Serve app on 127.0.0.1 (a free port) with two replicas of the tiny anchor set and tiny backpressure limits
(a batch of 2 plus 2 queued per replica, 8 ongoing per replica, 4 queued in the proxy) serves the load, overload and
kill tests; the deployment options are cluster/serve.yaml's with those limits. The load is benchmarks/load_test.py's
`LoadRun`. Faults are real: a replica's worker process gets SIGKILL; the S3 endpoint is our own moto server, stopped
before a replica starts and restarted on the same port. Figures are printed (`pytest -s`); timings are reported,
never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from ray import serve
from serve_app import free_port, load_test_module, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APP = f"rel-{uuid.uuid4().hex[:8]}"  # unique: replica processes are found by the app name in their title
CLIENTS = 4  # below the limits: at most 4 requests in the system, and each replica holds 2 running + 2 queued
LIMITS = {"num_replicas": 2, "max_ongoing_requests": 8, "max_queued_requests": 4, "graceful_shutdown_timeout_s": 2}


load_test = load_test_module()


def deployment_options(**overrides) -> dict:
    """cluster/serve.yaml's options for the deployment, without autoscaling, with `overrides`."""
    (options,) = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())["applications"][0]["deployments"]
    dropped = ("name", "ray_actor_options", "autoscaling_config")
    return {**{k: v for k, v in options.items() if k not in dropped}, **overrides}


def report(name: str, figures: dict) -> None:
    print(f"\nFIGURES {name}: {json.dumps(figures)}")


def replica_states(app: str) -> dict[str, int]:
    status = serve.status().applications[app].deployments["LerpServer"]
    return {str(getattr(state, "value", state)): n for state, n in status.replica_states.items()}


@pytest.fixture(scope="module")
def port():
    from lerpray.ray_cluster import local_ray

    with local_ray(num_cpus=2, log_to_driver=False):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            yield port
        finally:
            serve.shutdown()


@pytest.fixture(scope="module")
def base_url(port, tmp_path_factory) -> str:
    from lerpray.serve import ServeArgs, make_app
    from lerpray.testing import tiny_anchor_set

    args = ServeArgs(anchors=str(tiny_anchor_set(tmp_path_factory.mktemp("rel-serve"))), num_cpus=0.5,
                     torch_threads=1, max_batch_size=2, max_queue=2, max_tokens_cap=64, default_max_tokens=8)
    serve.run(make_app(args, **deployment_options(**LIMITS)), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    assert len(load_test.replica_pids(APP)) == 2, "expected two replica processes titled with the app name"
    return url


def test_load_below_the_queue_limit_loses_nothing(base_url):
    load_test.LoadRun(base_url, clients=CLIENTS, seconds=4, max_requests=200).start().join()  # warm-up
    run = load_test.LoadRun(base_url, clients=CLIENTS, seconds=15, max_requests=3000, max_tokens=16,
                            pids=lambda: load_test.replica_pids(APP), sample_s=0.5, seed=1)
    run.start().join()
    summary = run.summary()
    report("load", {k: v for k, v in summary.items() if k != "rss_series"})

    assert summary["requests"] >= 2 * CLIENTS
    assert summary["attempts_by_status"] == {"200": summary["attempts"]}, "a 5xx, 4xx or dropped connection"
    assert {r.route for r in run.records} == set(load_test.ROUTES)
    series = summary["rss_series"]
    assert len(series) == 2, f"memory of both replicas sampled: {list(series)}"
    for pid, samples in series.items():
        third = max(1, len(samples) // 3)
        early, late = max(m for _, m in samples[:third]), max(m for _, m in samples[-third:])
        assert late - early < 128, f"replica {pid} RSS grew from {early} to {late} MiB under steady load"


def test_over_the_queue_limit_fast_503_with_retry_after(base_url):
    body = {"prompt": "overload " * 4, "max_tokens": 48, "temperature": 0.0}
    burst = 48

    def one(_: int):
        with httpx.Client(base_url=base_url, timeout=120) as client:
            return load_test.send(client, "completion", "/v1/completions", body, 0)

    with ThreadPoolExecutor(burst) as pool:
        records = list(pool.map(one, range(burst)))
    summary = load_test.summarize(records, [], min(r.start for r in records), 0.0)
    report("overload", {k: summary[k] for k in ("attempts_by_status", "latency_200_s", "latency_503_s",
                                                "rejected_503")})

    assert {r.status for r in records} == {200, 503}, summary["attempts_by_status"]
    assert all(r.error is None for r in records), "a connection was dropped instead of answered"
    rejected = [r for r in records if r.status == 503]
    assert all(r.retry_after is not None and int(r.retry_after) >= 1 for r in rejected), "503 without Retry-After"
    after = httpx.post(f"{base_url}/v1/completions", json={"prompt": "still there?", "max_tokens": 4}, timeout=60)
    assert after.status_code == 200


def test_killed_replica_recovers_by_itself_under_load(base_url):
    before = load_test.replica_pids(APP)
    assert len(before) == 2
    run = load_test.LoadRun(base_url, clients=CLIENTS, seconds=240, max_requests=100_000, max_tokens=16, retries=4,
                            pids=lambda: load_test.replica_pids(APP), sample_s=0.5, seed=2)
    run.start()
    try:
        assert wait_for(lambda: sum(r.status == 200 for r in run.records) >= 8, 60), "no traffic before the kill"
        victim, killed_at = before[0], time.monotonic()
        os.kill(victim, signal.SIGKILL)  # the replica's Ray worker process, for real
        replaced = wait_for(lambda: (pids := load_test.replica_pids(APP)) and len(pids) == 2 and victim not in pids
                            and replica_states(APP) == {"RUNNING": 2}, 180)
        recovered_at = time.monotonic()
        assert replaced, f"the killed replica was not replaced: {load_test.replica_pids(APP)} {replica_states(APP)}"
        n = len(run.records)
        served = wait_for(lambda: sum(r.status == 200 for r in run.records[n:]) >= 8, 60)
        assert served, ("fewer than 8 requests answered 200 within 60 s of the replacement: "
                        f"{sorted({f'{r.status}:{r.error}' for r in run.records[n:]})}")
    finally:
        run.stop()
        run.join()

    records = run.records
    failed = [r for r in records if r.status != 200 or r.error is not None]
    in_flight = [r for r in records if r.attempt == 0 and r.start <= killed_at <= r.end]
    first_ok = min((r.end for r in records if r.status == 200 and r.start > killed_at), default=None)
    figures = {
        "failed_attempts": len(failed), "failed_requests_after_retries": sum(r.final for r in failed),
        "failures": sorted({f"{r.status}:{r.error}" for r in failed}), "in_flight_at_kill": len(in_flight),
        "failed_started_after_kill": sum(r.start > killed_at for r in failed),
        "replaced_after_s": round(recovered_at - killed_at, 1),
        "first_success_after_kill_s": None if first_ok is None else round(first_ok - killed_at, 2),
        "requests": run.summary()["requests"], "replicas_before": before,
        "replicas_after": load_test.replica_pids(APP),
    }
    report("kill-replica", figures)
    assert sum(r.final for r in failed) == 0, "a request failed even after client retries"
    assert len(failed) <= len(in_flight), "more attempts failed than were in flight when the replica died"
    # a 5xx from Serve's proxy, a refused connection, or a stream cut after its 200 when its replica died
    assert all(r.status in (None, 500, 502, 503) or r.error is not None for r in failed), figures["failures"]
    assert all(r.status == 200 for r in records if r.start > recovered_at), "failures after the replacement"


class MotoEndpoint:
    """Our own moto S3 server on 127.0.0.1, stopped for real (socket closed) and restarted on the same port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._make = lambda port: ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server = self._make(0)
        self._server.start()
        self.port, self.up = self._server.get_host_and_port()[1], True
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.up:
            self._server.stop()
            self.up = False

    def restart(self) -> None:
        self._server = self._make(self.port)
        self._server.start()
        self.up = True


def test_s3_unreachable_when_a_replica_starts_then_back(port, tmp_path):
    import boto3

    from lerpray.serve import ServeArgs, make_app
    from lerpray.testing import tiny_anchor_set

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    endpoint = MotoEndpoint()
    s3 = boto3.client("s3", endpoint_url=endpoint.url, **{"region_name": "us-east-1",
                      "aws_access_key_id": "testing", "aws_secret_access_key": "testing"})
    bucket = f"anchors-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    local = tiny_anchor_set(tmp_path)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == "lerpray-manifest.json"):  # manifest last
        s3.put_object(Bucket=bucket, Key=f"set/{path.relative_to(local).as_posix()}", Body=path.read_bytes())
    endpoint.stop()

    app = f"s3start-{uuid.uuid4().hex[:6]}"
    args = ServeArgs(anchors=f"s3://{bucket}/set", num_cpus=0.5, torch_threads=1, store_retry_s=20)
    actor = {"num_cpus": 0.5, "runtime_env": {"env_vars": {**env, "AWS_ENDPOINT_URL": endpoint.url}}}
    outcome: dict = {}

    def deploy() -> None:
        try:
            serve.run(make_app(args, num_replicas=1, ray_actor_options=actor), name=app, route_prefix="/s3")
            outcome["ok"] = True
        except Exception as err:  # noqa: BLE001 -- reported by the assertion below
            outcome["error"] = err

    started = time.monotonic()
    deployer = threading.Thread(target=deploy, daemon=True)
    deployer.start()
    try:
        def reason() -> str | None:
            apps = serve.status().applications
            message = apps[app].deployments["LerpServer"].message if app in apps and apps[app].deployments else ""
            return message if "anchor store still fails" in message else None

        message = wait_for(reason, 180)
        reported_at = time.monotonic()
        assert message, f"no clear reason reported while S3 was down: {serve.status().applications.get(app)}"
        assert endpoint.url in message and "EndpointConnectionError" in message, message
        assert "retried after 1, 2" in message, f"no backoff between attempts: {message}"
        assert outcome == {}, f"the deployment gave up while S3 was down: {outcome}"
        endpoint.restart()
        deployer.join(timeout=240)
        up_at = time.monotonic()
        assert outcome == {"ok": True}, outcome
        reply = httpx.post(f"http://127.0.0.1:{port}/s3/v1/completions", json={"prompt": "back", "max_tokens": 4},
                           timeout=60)
        assert reply.status_code == 200, reply.text
        report("s3-at-start", {"reason_after_s": round(reported_at - started, 1),
                               "up_after_s3_back_s": round(up_at - reported_at, 1),
                               "message": message[message.find("the anchor store still fails"):][:600]})
    finally:
        serve.delete(app)
        endpoint.stop()


def test_replica_start_retry_policy(monkeypatch):
    """The startup path's policy, without Ray: store trouble is retried with doubling delays until store_retry_s,
    then reported with the attempts and delays; a missing object or any other error fails at once."""
    from lerpray.anchors import AnchorSetError, ObjectNotFound, StoreError
    from lerpray.serve import live
    from lerpray.serve.config import ServeArgs

    clock, slept = [0.0], []
    monkeypatch.setattr(live.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(live.time, "sleep", lambda s: slept.append(s) or clock.__setitem__(0, clock[0] + s))

    def failing(errors: list[Exception]):
        def factory(args):
            clock[0] += 3.0  # one attempt with botocore's own retries
            if errors:
                raise errors.pop(0)
            return "engine"
        return factory

    args = ServeArgs(anchors="s3://b/set", store_retry_s=60)
    assert live.start_engine(failing([StoreError("endpoint down")] * 3), args) == "engine"
    assert slept == [1.0, 2.0, 4.0]

    slept.clear()
    with pytest.raises(StoreError, match=r"after 5 attempts in \d+ s \(retried after 1, 2, 4, 8 s\): endpoint down"):
        live.start_engine(failing([StoreError("endpoint down")] * 99), ServeArgs(anchors="s3://b/s",
                                                                                 store_retry_s=40))
    for error in (ObjectNotFound("gone"), AnchorSetError("corrupt"), RuntimeError("bug")):
        slept.clear()
        with pytest.raises(type(error)):
            live.start_engine(failing([error]), args)
        assert slept == []

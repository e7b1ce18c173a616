"""Bounded HTTP load test of a lerpray Serve app: N closed-loop clients for T seconds with random mixes and lengths,
and the RSS of every replica process sampled over time.

    python benchmarks/load_test.py                                  # tiny model, 2 replicas, 8 clients, 60 s
    python benchmarks/load_test.py --clients 16 --seconds 180 --max-requests 50000
    python benchmarks/load_test.py --url http://127.0.0.1:PORT --app NAME    # an app that is already running

127.0.0.1 only. Bounded: no new request after --seconds and at most --max-requests in total. Each request picks a
route (completion, chat, streamed completion), a prompt of random length, a random mix (alpha/lambda or raw anchor
weights, from the served model card) and max_tokens in [1, --max-tokens]. Clients may retry failed attempts
(--retries: 5xx or a dropped connection, after Retry-After or a short backoff); every attempt is recorded. Writes
benchmarks/results/load.json and docs/figures/load_memory.png. tests/integration/test_reliability_serve.py drives
the same `LoadRun` at a small size.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS, FIGURE = ROOT / "benchmarks" / "results" / "load.json", ROOT / "docs" / "figures" / "load_memory.png"
WORDS = "the a cat dog sun rain cold warm happy sad very quite report meeting letter friend city river".split()
ROUTES = ("completion", "chat", "completion-stream")


@dataclass
class Record:
    """One HTTP attempt. Times are time.monotonic() seconds."""

    start: float
    end: float
    route: str
    status: int | None  # None: no HTTP status (refused or dropped connection, timeout)
    error: str | None  # exception name, or "truncated-stream" when a 200 stream ended without [DONE]
    retry_after: str | None
    body_code: str | None  # OpenAI error code of an error response ("overloaded", ...); None for Serve's own
    attempt: int  # 0 = the first try of its request
    final: bool  # no retry follows this attempt
    version: str | None = None  # the answering anchor-set version (header x-lerpray-anchor-version)


def replica_pids(app: str, deployment: str = "LerpServer") -> list[int]:
    """PIDs of this app's replica processes: Ray titles an actor's worker `ray::ServeReplica:<app>:<deployment>`."""
    tag = f"ServeReplica:{app}:{deployment}"
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if tag in " ".join(proc.info["cmdline"] or []):
            pids.append(proc.info["pid"])
    return sorted(pids)


def random_mix(rng: random.Random, card: dict) -> dict:
    """An in-hull mix in one of the API's forms, over a random subset of the card's attributes or anchors."""
    if rng.random() < 0.3:
        weights = [rng.random() + 1e-3 for _ in card["anchors"]]
        return {"anchors": {name: w / sum(weights) for name, w in zip(card["anchors"], weights, strict=True)}}
    attrs = rng.sample(sorted(card["attributes"]), rng.randint(1, len(card["attributes"])))
    mix: dict = {"alpha": {a: rng.random() for a in attrs}}
    if rng.random() < 0.5:
        lam = [rng.random() + 1e-3 for _ in attrs]
        mix["lambda"] = {a: w / sum(lam) for a, w in zip(attrs, lam, strict=True)}
    return mix


def random_request(rng: random.Random, card: dict, max_tokens: int) -> tuple[str, str, dict]:
    """(route, path, body) with a prompt that fits the card's context length."""
    route = rng.choice(ROUTES)
    max_chars = max(8, (card["context_length"] - max_tokens) // 2)
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))[:max_chars]
    body = {"max_tokens": rng.randint(1, max_tokens), "seed": rng.randrange(2**31),
            "temperature": rng.choice([0.0, 0.7, 1.0]), "interpolation": random_mix(rng, card)}
    if route == "chat":
        return route, "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
    return route, "/v1/completions", {**body, "prompt": prompt, "stream": route.endswith("stream")}


def send(client: httpx.Client, route: str, path: str, body: dict, attempt: int) -> Record:
    """One attempt; a streamed reply is read to its end and must close with [DONE]."""
    start, status, error, headers, code = time.monotonic(), None, None, {}, None
    try:
        with client.stream("POST", path, json=body) as response:
            status, headers = response.status_code, response.headers
            content = b"".join(response.iter_bytes())
        if status == 200 and body.get("stream") and not content.rstrip().endswith(b"data: [DONE]"):
            error = "truncated-stream"
        elif status != 200:
            code = _error_code(content)
    except httpx.HTTPError as err:
        error = type(err).__name__
    return Record(start, time.monotonic(), route, status, error, headers.get("retry-after"), code, attempt, True,
                  headers.get("x-lerpray-anchor-version"))


def _error_code(content: bytes) -> str | None:
    try:
        return json.loads(content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None  # Serve's own plain-text errors (its 503 when max_queued_requests is reached)


class LoadRun:
    """`clients` threads send requests back to back until `seconds` pass, `max_requests` were sent, or stop()."""

    def __init__(self, base_url: str, *, clients: int, seconds: float, max_requests: int, max_tokens: int = 16,
                 retries: int = 0, headers: dict | None = None, seed: int = 0, timeout_s: float = 120.0,
                 pids=None, sample_s: float = 0.5) -> None:
        if not base_url.startswith("http://127.0.0.1:"):
            raise ValueError(f"the load test only targets 127.0.0.1, not {base_url}")
        self.base_url, self.clients, self.seconds, self.max_requests = base_url, clients, seconds, max_requests
        self.max_tokens, self.retries, self.headers, self.seed = max_tokens, retries, headers or {}, seed
        self.timeout_s, self.pids, self.sample_s = timeout_s, pids, sample_s
        self.records: list[Record] = []
        self.memory: list[tuple[float, int, int]] = []  # (monotonic s, pid, RSS bytes)
        self._lock, self._stop, self._sent = threading.Lock(), threading.Event(), 0
        self.started = self.ended = 0.0
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadRun:
        self.card = httpx.get(f"{self.base_url}/v1/models", headers=self.headers, timeout=60).json()["data"][0]
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        if self.pids is not None:
            self._threads.append(threading.Thread(target=self._sample_memory, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()
        self.ended = time.monotonic()

    def _more(self) -> bool:
        with self._lock:
            if self._stop.is_set() or time.monotonic() - self.started > self.seconds or self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout_s) as client:
            while self._more():
                route, path, body = random_request(rng, self.card, self.max_tokens)
                for attempt in range(self.retries + 1):
                    record = send(client, route, path, body, attempt)
                    # A dropped connection includes a stream cut after its 200 (its replica died mid-reply).
                    failed = record.status is None or record.status >= 500 or record.error is not None
                    retry = attempt < self.retries and failed
                    record.final = not retry
                    with self._lock:
                        self.records.append(record)
                    if not retry:
                        break
                    time.sleep(float(record.retry_after or 0.2 * 2**attempt))

    def _sample_memory(self) -> None:
        while not self._stop.is_set() and time.monotonic() - self.started <= self.seconds:
            now = time.monotonic()
            for pid in self.pids():
                try:
                    self.memory.append((now, pid, psutil.Process(pid).memory_info().rss))
                except psutil.NoSuchProcess:
                    pass
            time.sleep(self.sample_s)

    def summary(self) -> dict:
        return summarize(self.records, self.memory, self.started, (self.ended or time.monotonic()) - self.started)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summarize(records: list[Record], memory: list[tuple[float, int, int]], started: float, wall_s: float) -> dict:
    final = [r for r in records if r.final]
    ok = [r.end - r.start for r in final if r.status == 200 and r.error is None]
    rejected = [r for r in records if r.status == 503]
    by_status: dict[str, int] = {}
    for r in records:
        key = str(r.status) if r.status is not None else f"no-status:{r.error}"
        by_status[key] = by_status.get(key, 0) + 1
    rss: dict[int, list[tuple[float, int]]] = {}
    for t, pid, value in memory:
        rss.setdefault(pid, []).append((round(t - started, 2), value))
    return {
        "requests": len(final), "attempts": len(records), "wall_s": round(wall_s, 2),
        "requests_per_s": round(len(final) / wall_s, 2) if wall_s else None,
        "attempts_by_status": by_status,
        "failed_attempts": sum(r.status != 200 or r.error is not None for r in records),
        "failed_requests": sum(r.status != 200 or r.error is not None for r in final),
        "latency_200_s": {f"p{q}": _round(percentile(ok, q)) for q in (50, 90, 99, 100)},
        "latency_503_s": {layer: {f"p{q}": _round(percentile(times, q)) for q in (50, 99, 100)}
                          for layer, times in _rejections_by_layer(rejected).items()},
        "rejected_503": {"total": len(rejected), "with_retry_after": sum(r.retry_after is not None for r in rejected),
                         "by_lerpray_batcher": sum(r.body_code == "overloaded" for r in rejected)},
        "rss_mib": {str(pid): {"first": _mib(s[0][1]), "max": _mib(max(v for _, v in s)), "last": _mib(s[-1][1]),
                               "samples": len(s)} for pid, s in rss.items()},
        "rss_series": {str(pid): [(t, _mib(v)) for t, v in s] for pid, s in rss.items()},
    }


def _rejections_by_layer(rejected: list[Record]) -> dict[str, list[float]]:
    """503 latencies: lerpray's batcher (queue full, OpenAI error body) vs Serve's proxy (max_queued_requests)."""
    lerpray = [r.end - r.start for r in rejected if r.body_code == "overloaded"]
    return {"lerpray": lerpray, "serve": [r.end - r.start for r in rejected if r.body_code != "overloaded"]}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _mib(value: int) -> float:
    return round(value / 2**20, 1)


def plot_memory(summary: dict, path: Path, title: str) -> None:
    """RSS of each replica process over the run, one line per PID; the y axis spans the data, not 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for pid, series in summary["rss_series"].items():
        first, last = series[0][1], series[-1][1]
        ax.plot([t for t, _ in series], [m for _, m in series], label=f"replica pid {pid}: {first:.0f} -> {last:.0f} MiB")
    ax.set(xlabel="seconds since the load started", ylabel="RSS (MiB)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def serve_tiny_app(root: Path, *, app: str, replicas: int, port: int, **serve_args) -> str:
    """Deploy a tiny anchor set (lerpray.testing) as `app` on the running Serve instance; returns its base URL."""
    from ray import serve

    from lerpray.serve import ServeArgs, make_app
    from lerpray.testing import tiny_anchor_set

    args = ServeArgs(anchors=str(tiny_anchor_set(root)), num_cpus=0.5, torch_threads=1, **serve_args)
    serve.run(make_app(args, num_replicas=replicas), name=app, route_prefix="/")
    return f"http://127.0.0.1:{port}"


def main() -> None:
    import socket
    import tempfile
    import uuid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="base URL of a running app (127.0.0.1); default: start a tiny one")
    parser.add_argument("--app", help="the running app's name (to find its replica processes)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=20000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=2)
    opts = parser.parse_args()
    if opts.url:
        run_and_report(opts, opts.url, opts.app)
        return
    from ray import serve

    from lerpray.ray_cluster import local_ray

    with local_ray(num_cpus=2, log_to_driver=False), tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = f"load-{uuid.uuid4().hex[:8]}"
        try:
            url = serve_tiny_app(Path(tmp), app=app, replicas=opts.replicas, port=port,
                                 max_tokens_cap=opts.max_tokens, default_max_tokens=opts.max_tokens)
            run_and_report(opts, url, app)
        finally:
            serve.shutdown()


def run_and_report(opts: argparse.Namespace, url: str, app: str | None) -> None:
    run = LoadRun(url, clients=opts.clients, seconds=opts.seconds, max_requests=opts.max_requests,
                  max_tokens=opts.max_tokens, pids=(lambda: replica_pids(app)) if app else None)
    run.start().join()  # the clients stop by themselves after --seconds or --max-requests
    summary = run.summary()
    config = {k: getattr(opts, k) for k in ("clients", "seconds", "max_requests", "max_tokens", "replicas")}
    from _common import write_json  # script mode only: tests load this module by path, without benchmarks/ on sys.path

    write_json(RESULTS, {"config": config, **summary})
    if summary["rss_series"]:
        plot_memory(summary, FIGURE, f"replica RSS under load: {opts.clients} clients, {summary['requests']} requests")
    print(json.dumps({k: v for k, v in summary.items() if k != "rss_series"}, indent=1))


if __name__ == "__main__":
    main()

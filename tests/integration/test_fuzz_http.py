"""Hostile input against the real HTTP API: property-based fuzzing with hypothesis, the body size limit,
the API key check and the default bind address. Rows of docs/reliability.md.

One Serve app (one replica, the tiny anchor set, API key on, max_tokens capped at 2 so that thousands of requests
fit in a minute) on 127.0.0.1 with the host `lerpray serve` uses by default. Generated requests go out in batches
from a thread pool (8 at a time, below every queue limit). Every answer must be below 500 and, unless 200, an
OpenAI error body; after the fuzzing the same replica process (same PID) still answers valid requests.
"""

from __future__ import annotations

import inspect
import json
import queue
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray import serve

pytestmark = pytest.mark.integration

APP = f"fuzz-{uuid.uuid4().hex[:8]}"
KEY_ENV, KEY = "LERPRAY_FUZZ_API_KEY", "fuzz-key-7f3a9c"
AUTH = {"Authorization": f"Bearer {KEY}"}
CAP, BODY_LIMIT, POOL, BATCH = 2, 16 * 1024, 8, 25
FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
SENT: dict[str, int] = {}  # test -> requests sent, for the report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, replica PID): Serve started with `lerpray serve`'s default http_options, on a free port."""
    from lerpray.ray_cluster import local_ray
    from lerpray.serve import ServeArgs, make_app
    from lerpray.serve.commands import serve_config
    from lerpray.testing import tiny_anchor_set

    anchors = str(tiny_anchor_set(tmp_path_factory.mktemp("fuzz")))
    http = serve_config(None, anchors=anchors, host=None, port=free_port())["http_options"]
    with local_ray(num_cpus=2, log_to_driver=False):
        serve.start(http_options=http)
        try:
            args = ServeArgs(anchors=anchors, api_key_env=KEY_ENV, max_tokens_cap=CAP, default_max_tokens=CAP,
                             max_body_bytes=BODY_LIMIT, num_cpus=1, torch_threads=1)
            actor = {"num_cpus": 1, "runtime_env": {"env_vars": {KEY_ENV: KEY}}}
            serve.run(make_app(args, ray_actor_options=actor), name=APP, route_prefix="/")
            (pid,) = replica_pids()
            yield f"http://{http['host']}:{http['port']}", pid
        finally:
            serve.shutdown()


def replica_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"]) if f"ServeReplica:{APP}:" in " ".join(p.info["cmdline"] or [])]


# ---- strategies -------------------------------------------------------------------------------------------------

ODD_TEXT = ["", "\x00", "\ufeff", "\u202e", "é\u0301", "\U0001f600" * 50, "\U0010ffff", "\udcff", "\ud800",
            "../../etc/passwd", "%s%n%x", "{{7*7}}", "<script>", "\r\nX-Injected: 1", "a" * 3000, "\u0000" * 100]
HUGE_NUMBERS = [0, -1, 1, 2, 3, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**80, -(2**63) - 1, 10**30,
                -(10**30), 1e308, -1e308, 5e-324, 1e-300, -0.0, 0.5, 1.5, 2.000001]
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from(HUGE_NUMBERS)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30) | st.sampled_from(ODD_TEXT))
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                         max_size=4), max_leaves=12)
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n",
          "min_tokens", "stop", "seed", "stream", "stream_options", "user", "interpolation", "presence_penalty", "frequency_penalty",
          "logit_bias", "logprobs", "top_logprobs", "echo", "suffix", "best_of", "tools", "tool_choice"]
TOKENS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FFF, exclude_categories=("Cs", "Zs", "Cc")),
                 min_size=1, max_size=20)  # what an HTTP client can put in a header value
NAMES = ["sentiment", "formality", "sentiment.positive", "formality.informal", "nope", "", "\u202esentiment"]


def deep(depth: int, kind: str) -> object:
    value: object = 0.5
    for _ in range(depth):
        value = [value] if kind == "list" else {"alpha": value}
    return value


@st.composite
def mixes(draw) -> object:
    """Interpolation objects: right shape with hostile numbers and names, or anything at all."""
    numbers = st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=6), SCALARS | st.floats(-3, 3), max_size=4)
    shaped = st.fixed_dictionaries({}, optional={"alpha": numbers, "lambda": numbers, "anchors": numbers,
                                                 "extrapolate": SCALARS})
    depth = st.integers(1, 500).flatmap(lambda d: st.sampled_from([deep(d, "list"), deep(d, "dict")]))
    return draw(shaped | JSON | depth)


@st.composite
def bodies(draw) -> tuple[str, dict]:
    """(path, body): a valid small request with some fields replaced, removed or added."""
    chat = draw(st.booleans())
    text = draw(st.text(max_size=40) | st.sampled_from(ODD_TEXT))
    body: dict = {"max_tokens": draw(st.integers(1, CAP)), "interpolation": draw(mixes())}
    body.update({"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text})
    for field in draw(st.lists(st.sampled_from(FIELDS) | st.text(max_size=10), max_size=3)):
        choice = draw(st.integers(0, 2))
        if choice == 0:
            body.pop(field, None)
        else:
            body[field] = draw(JSON if choice == 1 else st.sampled_from(HUGE_NUMBERS + ODD_TEXT))
    return ("/v1/chat/completions" if chat else "/v1/completions"), body


@st.composite
def raw_requests(draw) -> tuple[str, str, bytes, dict]:
    """(method, path, raw body, headers): malformed JSON bytes, odd methods, paths, content types and API keys."""
    path, body = draw(bodies())
    encoded = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    content = draw(st.sampled_from(["json", "cut", "bytes", "bad-utf8", "repeat", "deep"]))
    if content == "cut":
        encoded = encoded[: draw(st.integers(0, max(0, len(encoded) - 1)))]  # cut JSON
    elif content == "bytes":
        encoded = draw(st.binary(max_size=200))
    elif content == "bad-utf8":
        at = draw(st.integers(0, len(encoded)))
        encoded = encoded[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + encoded[at:]
    elif content == "repeat":
        encoded = encoded * draw(st.integers(2, 40))
    elif content == "deep":  # nesting far past any recursion limit (json.dumps itself could not write it)
        depth, opener = draw(st.integers(1, 8000)), draw(st.sampled_from([b"[", b'{"a":']))
        closer = b"]" if opener == b"[" else b"}"
        encoded = b'{"prompt": "x", "interpolation": ' + opener * depth + b"1" + closer * depth + b"}"
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-"
                                                     "urlencoded", "application/json; charset=latin-1"]))}
    auth = draw(st.sampled_from(["good", "good", "good", "none", "wrong", "basic", "odd"]))
    if auth != "none":
        token = {"good": KEY, "wrong": KEY[:-1] + "X", "basic": KEY, "odd": draw(TOKENS)}[auth]
        scheme = "Basic" if auth == "basic" else "Bearer"
        headers["Authorization"] = f"{scheme} {token}".encode("utf-8", "surrogatepass")
    method = draw(st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE", "PATCH"]))
    path = draw(st.sampled_from([path] * 6 + ["/v1/models", "/v1/nothing", "/v1/completions/../models", "//v1//x",
                                              "/%2e%2e/%2e%2e/etc/passwd", "/healthz"]))
    return method, path, encoded, headers


# ---- checks -----------------------------------------------------------------------------------------------------


def check(response: httpx.Response, label: object) -> None:
    """Never a 5xx; an error is OpenAI's error JSON; a 200 completion is complete (a stream ends with [DONE])."""
    assert response.status_code < 500, (response.status_code, response.text[:300], label)
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], (error, label)
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]"), (response.text[-300:], label)


@pytest.fixture(scope="module")
def send_all(server):
    """send_all(requests, name): POOL threads with one kept-alive client each; every response is `check`ed."""
    clients: queue.Queue = queue.Queue()
    for _ in range(POOL):
        clients.put(httpx.Client(base_url=server[0], timeout=60))

    def one(request):
        method, path, content, headers = request
        client = clients.get()
        try:
            response = client.request(method, path, content=content, headers=headers)
        finally:
            clients.put(client)
        check(response, request if len(content) < 2000 else (method, path, content[:200], headers))
        return response.status_code

    def send(requests: list[tuple[str, str, bytes, dict]], name: str) -> list[int]:
        statuses = list(pool.map(one, requests))
        SENT[name] = SENT.get(name, 0) + len(requests)
        return statuses

    with ThreadPoolExecutor(POOL) as pool:
        yield send
    while not clients.empty():
        clients.get().close()


def still_serving(base_url: str, pid: int) -> None:
    """The replica that took the fuzzing is the one answering, and valid requests still work."""
    assert replica_pids() == [pid], f"the replica process changed: {replica_pids()} (was {pid})"
    assert httpx.get(f"{base_url}/healthz").json()["status"] == "ok"
    reply = httpx.post(f"{base_url}/v1/completions", headers=AUTH, timeout=60,
                       json={"prompt": "after the storm", "max_tokens": 2, "interpolation": {"alpha": {"sentiment": 1}}})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1, reply.text


# ---- tests ------------------------------------------------------------------------------------------------------


@FUZZ
@given(st.lists(bodies(), min_size=BATCH, max_size=BATCH))
def test_fuzzed_json_bodies_never_5xx(send_all, batch):
    encoded = [("POST", path, json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass"),
                {**AUTH, "Content-Type": "application/json"}) for path, body in batch]
    send_all(encoded, "json")


@FUZZ
@given(st.lists(raw_requests(), min_size=BATCH, max_size=BATCH))
def test_fuzzed_raw_requests_never_5xx(send_all, batch):
    send_all(batch, "raw")


NUMERIC_FIELDS = ["max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_tokens", "seed", "n",
                  "top_logprobs", "presence_penalty", "best_of"]
LITERALS = [str(n) for n in HUGE_NUMBERS] + ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" * 5000, "0.1e-400"]


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_every_numeric_field_takes_any_number(send_all, field):
    """Each hostile number, written as a raw JSON literal, in each numeric field of both routes: never a 5xx."""
    headers = {**AUTH, "Content-Type": "application/json"}
    requests = [("POST", path, f'{{{base}, "{field}": {literal}}}'.encode(), headers) for literal in LITERALS
                for path, base in (("/v1/completions", '"prompt": "x"'),
                                   ("/v1/chat/completions", '"messages": [{"role": "user", "content": "x"}]'))]
    send_all(requests, "numbers")


def test_still_serving_after_the_fuzzing(server):
    """Runs after the fuzz tests (file order): no crash, no replacement replica, valid requests answered."""
    still_serving(*server)
    print(f"\nFIGURES fuzz: {json.dumps({**SENT, 'total': sum(SENT.values())})}")
    if {"json", "raw"} <= set(SENT):  # the whole file ran, not a selection
        assert sum(SENT.values()) >= 2000, SENT


@pytest.mark.parametrize("size", [BODY_LIMIT + 1, 4 * BODY_LIMIT, 64 * BODY_LIMIT])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_over_the_limit_get_413(server, size, chunked):
    base_url, _ = server
    body = b'{"prompt": "' + b"x" * (size - 14) + b'"}'
    content = iter([body[i: i + 4096] for i in range(0, len(body), 4096)]) if chunked else body
    response = httpx.post(f"{base_url}/v1/completions", content=content, timeout=60,
                          headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413, response.text[:200]
    assert response.json()["error"]["code"] == "body_too_large"


def test_a_body_at_the_limit_is_read(server):
    base_url, _ = server
    body = b'{"prompt": "' + b"x" * (BODY_LIMIT - 14) + b'"}'
    assert len(body) == BODY_LIMIT
    response = httpx.post(f"{base_url}/v1/completions", content=body, headers={**AUTH, "Content-Type": "application/json"},
                          timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


NEAR_MISSES = [KEY[:-1], KEY + "0", KEY.upper(), "X" + KEY[1:], KEY[:-1] + "X", f" {KEY}x", KEY * 2, "\u00e9" + KEY]


@pytest.mark.parametrize("token", NEAR_MISSES)
def test_near_miss_api_keys_are_refused(server, token):
    base_url, _ = server
    headers = {"Authorization": f"Bearer {token}".encode()}
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions")):
        response = httpx.request(method, f"{base_url}{path}", headers=headers, json={"prompt": "x", "max_tokens": 1})
        assert response.status_code == 401, (token, response.text)
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{base_url}/v1/models", headers=AUTH).status_code == 200


def test_api_key_is_compared_in_constant_time(monkeypatch):
    """Every check goes through hmac.compare_digest on bytes (whatever the length or content of the given key),
    and neither ingress (the one-deployment app's, the multiplexed app's router) has another comparison with the key."""
    import hmac

    from lerpray.serve import answers, deployment, router

    source = inspect.getsource(answers.authorize)
    assert "hmac.compare_digest(" in source and "== key" not in source and "key ==" not in source
    for ingress in (deployment.LerpServer.func_or_class, router.LerpRouter.func_or_class):
        source = inspect.getsource(ingress)
        assert "== self._api_key" not in source and "self._api_key ==" not in source, ingress
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(answers.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))

    class FakeRequest:
        def __init__(self, header: str | None) -> None:
            self.headers = {} if header is None else {"authorization": header}

    good = [f"Bearer {KEY}", f"bearer {KEY}"]
    for header in [*good, *(f"Bearer {t}" for t in NEAR_MISSES), None, f"Basic {KEY}", "Bearer", "Bearer "]:
        calls.clear()
        try:
            answers.authorize(FakeRequest(header), KEY.encode())
            accepted = True
        except answers.errors.ApiError as err:
            assert err.status == 401
            accepted = False
        assert accepted == (header in good), header
        assert len(calls) == 1 and calls[0][1] == KEY.encode() and isinstance(calls[0][0], bytes), (header, calls)


def test_serves_on_127_0_0_1_by_default(server):
    """`lerpray serve` and cluster/serve.yaml default to 127.0.0.1, and the running proxy listens only there."""
    from pathlib import Path

    import psutil
    import yaml

    from lerpray.serve.commands import serve_config
    from lerpray.serve.config import ServeArgs

    assert "host" not in ServeArgs.model_fields  # the address is Serve's http_options, set below
    assert serve_config(None, anchors="/x", host=None, port=None)["http_options"]["host"] == "127.0.0.1"
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "cluster" / "serve.yaml").read_text())
    assert config["http_options"]["host"] == "127.0.0.1"
    assert serve_config(config, anchors="/x", host=None, port=None)["http_options"]["host"] == "127.0.0.1"

    port = int(server[0].rsplit(":", 1)[1])
    listening = [c.laddr for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.laddr.port == port]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    # Reached through 127.0.0.1 only. 127.0.0.2 is a loopback address every Linux host answers on, yet a socket
    # bound to 127.0.0.1 alone refuses it, so the check below runs on a host without any other interface too.
    other = ["127.0.0.2", *(a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                            if a.family == socket.AF_INET and not a.address.startswith("127."))]
    assert reachable("127.0.0.1", port)
    assert [address for address in other if reachable(address, port)] == [], "the proxy answers beyond 127.0.0.1"
    with socket.create_server(("0.0.0.0", 0)) as wildcard:  # the probe can fail: all interfaces answer on 127.0.0.2
        assert reachable("127.0.0.2", wildcard.getsockname()[1])


def reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False

"""The multiplexed app over HTTP: more anchor sets than one replica may hold, routed by Ray Serve model multiplexing.

A real Serve app (127.0.0.1, a free port): LerpRouter in front of two LerpSets replicas that hold one set each
(multiplex.max_sets_per_replica: 1) and three tiny sets (other random adapters on other tiny bases), so serving all
three unloads and reloads sets. Every answer, plain or streamed, is compared with an in-process engine on the same set
(same seed: the same text); the header x-lerpray-replica shows that a set's repeated requests go to the replica holding
it, that two sets loaded side by side sit on the two replicas, and that a set unloaded and loaded again answers the
same. A set whose files are damaged is refused with a 503 in OpenAI's shape.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from serve_app import running_app

from lerpray.model import Engine, GenerationRequest, SamplingParams

pytestmark = pytest.mark.integration

SETS = ("lerpray", "set-b", "set-c")  # the main set's id, then two of `sets`
BROKEN = "set-broken"  # a set whose manifest reads but whose adapter file is damaged: it cannot load
REPLICA = "x-lerpray-replica"
PROMPT, MAX_TOKENS, SEED = "Once upon a time", 12, 7
MIX = {"alpha": {"sentiment": 0.8, "formality": 0.3}}
ROUTING_INFO_S = 1.0  # a replica pushes the sets it holds every 0.1 s; Serve's handles learn it shortly after


@pytest.fixture(scope="module")
def uris(tmp_path_factory) -> dict[str, str]:
    from lerpray.testing import tiny_anchor_set

    tmp = tmp_path_factory.mktemp("multiplex")
    uris = {name: str(tiny_anchor_set(tmp / name, seed=i)) for i, name in enumerate((*SETS, BROKEN))}
    damaged = next((tmp / BROKEN / "anchors").glob("*/adapter_model.safetensors"))
    damaged.write_bytes(damaged.read_bytes()[:-8] + bytes(8))  # the manifest's sha256 no longer matches
    return uris


@pytest.fixture(scope="module")
def expected(uris) -> dict[str, str]:
    """Each set's text for PROMPT, MIX and SEED, from an in-process engine."""
    from lerpray.mixing import resolve_mix

    out = {}
    for name in SETS:
        engine = Engine.from_uri(uris[name])
        request = GenerationRequest(coeffs=resolve_mix(MIX, engine.layout), prompt=PROMPT,
                                    sampling=SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, seed=SEED))  # fmt: skip
        out[name] = engine.generate([request])[0].text
    assert len(set(out.values())) == len(SETS), f"the sets must answer differently to tell them apart: {out}"
    return out


@pytest.fixture(scope="module")
def http(uris):
    from lerpray.serve import ServeArgs

    main, *others = SETS
    args = ServeArgs(anchors=uris[main], sets={name: uris[name] for name in (*others, BROKEN)}, num_cpus=0.5, torch_threads=1,
                     max_batch_size=4, max_tokens_cap=32, default_max_tokens=8, multiplex={"max_sets_per_replica": 1},
                     presets={"lerpray-upbeat": {"alpha": {"sentiment": 0.9}}})  # fmt: skip
    with running_app(args, num_replicas=2) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


def complete(http, model: str, **extra) -> httpx.Response:
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "seed": SEED, "interpolation": MIX}
    return http.post("/v1/completions", json={**body, **extra})


def test_every_set_answers_as_its_own_engine_on_the_replica_that_holds_it(http, expected):
    where = {}
    for name in SETS:  # each set loads on first use; once Serve knows where, its next requests go there
        replies = [complete(http, name)]
        time.sleep(ROUTING_INFO_S)
        replies += [complete(http, name) for _ in range(3)]
        assert [r.status_code for r in replies] == [200] * 4, replies[0].text
        assert [r.json()["choices"][0]["text"] for r in replies] == [expected[name]] * 4, name
        replicas = {r.headers[REPLICA] for r in replies}
        assert len(replicas) == 1, f"{name}'s requests went to {replicas}, not to the one replica holding it"
        where[name] = replicas.pop()
    assert where["lerpray"] != where["set-b"], "the first two sets load on the two (empty) replicas side by side"
    for name in SETS:  # the third set unloaded one of the first two: that one loads again and answers the same
        reply = complete(http, name)
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == expected[name], name


def test_a_streamed_answer_comes_through_the_router(http, expected):
    for name in ("set-c", "lerpray"):
        with http.stream("POST", "/v1/completions", json={
            "model": name, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "seed": SEED, "interpolation": MIX,
            "stream": True, "stream_options": {"include_usage": True},
        }) as response:  # fmt: skip
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            assert response.headers[REPLICA]
            lines = [line.removeprefix("data: ") for line in response.iter_lines() if line]
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(line) for line in lines[:-1]]
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        assert text == expected[name], name
        assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS


def test_presets_and_inline_mixes_go_to_their_set(http):
    preset = complete(http, "lerpray-upbeat", interpolation=None)
    assert preset.status_code == 200, preset.text
    assert preset.json()["model"] == "lerpray-upbeat"
    inline = complete(http, "set-b:sentiment=0.8,formality=0.3", interpolation=None)
    assert inline.status_code == 200, inline.text


def test_models_lists_every_set(http):
    cards = http.get("/v1/models").json()["data"]
    assert [c["id"] for c in cards] == ["lerpray", "lerpray-upbeat", "set-b", "set-c", BROKEN]
    assert all(c["anchors"] and c["fingerprint"].startswith("v") for c in cards)
    by_id = {c["id"]: c for c in cards}  # a served set's cards come from its replica (its engine's context length)
    assert isinstance(by_id["set-b"]["context_length"], int) and by_id[BROKEN]["context_length"] is None


def test_errors_keep_openais_shape_and_4xx(http):
    unknown = complete(http, "no-such-set")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert "set-b" in unknown.json()["error"]["message"]
    too_many = complete(http, "set-b", max_tokens=99)  # over max_tokens_cap: refused by the set replica
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "max_tokens"
    assert too_many.headers[REPLICA]
    bad_json = http.post("/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    no_route = http.get("/v1/nothing")
    assert no_route.status_code == 404 and no_route.json()["error"]["code"] == "not_found"


def test_a_set_that_cannot_load_is_a_503_and_the_others_keep_answering(http, expected):
    reply = complete(http, BROKEN)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    error = reply.json()["error"]
    assert error["code"] == "set_unavailable" and BROKEN in error["message"] and "AnchorSetError" in error["message"]
    assert complete(http, "set-b").json()["choices"][0]["text"] == expected["set-b"]

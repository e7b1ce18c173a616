"""Serving without Ray: OpenAI schemas, the error mapping, app args, request translation, the CLI's config merge, and
the continuous batcher driven against a scripted fake engine (each step waits for the test's permit)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from lerpray.mixing import AnchorLayout, MixError
from lerpray.model import EngineError, GenerationRequest, PromptTooLongError, TokenEvent
from lerpray.serve.batcher import Batcher, QueueFullError
from lerpray.serve.commands import APP_IMPORT_PATH, serve_config
from lerpray.serve.config import ServeArgs
from lerpray.serve.errors import to_api_error
from lerpray.serve.protocol import generation_request, mix_context
from lerpray.serve.replies import Reply
from lerpray.serve.schemas import ChatCompletionRequest, CompletionRequest

pytestmark = pytest.mark.unit

LAYOUT = AnchorLayout(anchors=("s.pos", "s.neg"), attributes={"s": ("s.neg", "s.pos")})
REPO = Path(__file__).resolve().parents[2]


def error_of(schema, body: str) -> dict:
    with pytest.raises(ValidationError) as err:
        schema.model_validate_json(body)
    api = to_api_error(err.value)
    assert api.status == 400
    return api.json()["error"]


# ---- schemas and the error mapping ----------------------------------------------------------------------------


def test_chat_request_normalises_openai_variants():
    body = ('{"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", '
            '"text": "b"}]}, {"role": "user", "content": "hi"}], "max_completion_tokens": 9, "stop": "x"}')
    parsed = ChatCompletionRequest.model_validate_json(body)
    assert [m.as_template_message() for m in parsed.messages] == [
        {"role": "system", "content": "ab"}, {"role": "user", "content": "hi"}]
    assert (parsed.max_tokens, parsed.stop_strings()) == (9, ("x",))


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ('{"prompt": "x", "max_tokens": "5"}', "max_tokens", "valid integer"),  # strict: no coercion
        ('{"prompt": "x", "max_tokens": 2.0}', "max_tokens", "valid integer"),
        ('{"prompt": "x", "temperature": 1e999}', "temperature", "finite"),
        ('{"prompt": "x", "n": 0}', "n", "greater than or equal to 1"),
        ('{"prompt": []}', "prompt", "empty list"),
        ('{"prompt": [1, 2]}', "prompt[0]", "valid string"),  # token-id prompts are not taken
        ('{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}', "stop", "at most 4"),
        ('{"prompt": "x", "presence_penalty": 2.5}', "presence_penalty", "less than or equal to 2"),
        ('{"prompt": "x", "logprobs": 21}', "logprobs", "less than or equal to 20"),
        ('{"prompt": "x", "logit_bias": {"abc": 1}}', "logit_bias", "token ids"),
        ('{"prompt": "x", "logit_bias": {"5": 101}}', "logit_bias", "less than or equal to 100"),
        ('{"prompt": "x", "stream_options": {"include_usage": "yes"}}', "stream_options.include_usage", "boolean"),
        ('{"prompt": "x", "max_tokenz": 5}', "max_tokenz", "unknown field"),
    ],
)
def test_completion_request_errors_name_the_field(body, param, fragment):
    error = error_of(CompletionRequest, body)
    assert error["param"] == param
    assert fragment in error["message"]


def test_union_errors_report_the_deepest_branch():
    body = '{"messages": [{"role": "user", "content": [{"type": "image_url", "text": "x"}]}]}'
    error = error_of(ChatCompletionRequest, body)
    assert error["param"] == "messages[0].content[0]"
    assert "only text parts" in error["message"]


def test_non_object_and_invalid_json_bodies():
    assert error_of(CompletionRequest, "[1]")["code"] == "invalid_type"
    assert error_of(CompletionRequest, '{"prompt": ')["code"] == "invalid_json"


def test_library_errors_map_to_4xx_and_bugs_to_500():
    mix = to_api_error(MixError("interpolation.alpha.s", "must be in [0, 1]"))
    assert (mix.status, mix.json()["error"]["param"]) == (400, "interpolation.alpha.s")
    long = to_api_error(PromptTooLongError("too long"), prompt_field="messages")
    assert (long.status, long.json()["error"]["code"], long.json()["error"]["param"]) == (
        400, "context_length_exceeded", "messages")
    assert to_api_error(EngineError("no chat template")).status == 400
    full = to_api_error(QueueFullError(waiting=3, retry_after_s=2))
    assert (full.status, full.headers) == (503, {"Retry-After": "2"})
    bug = to_api_error(KeyError("oops"))
    assert (bug.status, bug.json()["error"]["type"]) == (500, "server_error")
    assert "oops" not in bug.json()["error"]["message"]


# ---- app args and request translation ------------------------------------------------------------------------


def test_serve_args_validation():
    with pytest.raises(ValidationError, match="default_max_tokens"):
        ServeArgs(anchors="x", default_max_tokens=100, max_tokens_cap=50)
    with pytest.raises(ValidationError, match="contain"):
        ServeArgs(anchors="x", extrapolation={"alpha_min": 0.5})
    with pytest.raises(ValidationError, match="anchorz"):
        ServeArgs.model_validate({"anchors": "x", "anchorz": "y"})
    assert ServeArgs(anchors="x", extrapolation=None).bounds() is None


def test_multiplex_args_validation():
    assert ServeArgs(anchors="x", multiplex={"max_sets_per_replica": 2}).multiplex.max_sets_per_replica == 2
    with pytest.raises(ValidationError, match="max_sets_per_replica\n.*greater than or equal to 1"):
        ServeArgs(anchors="x", multiplex={"max_sets_per_replica": 0})
    with pytest.raises(ValidationError, match="max_sets\n.*Extra inputs"):
        ServeArgs(anchors="x", multiplex={"max_sets_per_replica": 1, "max_sets": 2})
    both = ServeArgs(anchors="x", multiplex={"max_sets_per_replica": 1}, anchor_capacity=8)  # the replica's pool
    assert (both.multiplex.max_sets_per_replica, both.anchor_capacity) == (1, 8)


def test_generation_request_applies_server_policy():
    args = ServeArgs(anchors="x", max_tokens_cap=20, default_max_tokens=10)
    parsed = CompletionRequest(prompt="hi", seed=4, stop=["\n"], interpolation={"alpha": {"s": 0.25}})
    mixes = mix_context(args, LAYOUT)
    request = generation_request(parsed, args, mixes)
    assert request.coeffs == (0.25, 0.75)
    assert (request.sampling.max_tokens, request.sampling.seed, request.sampling.stop) == (10, 4, ("\n",))
    assert generation_request(CompletionRequest(prompt="hi"), args, mixes).coeffs == (0.5, 0.5)  # hull centre
    with pytest.raises(Exception, match="cap of 20") as err:
        generation_request(CompletionRequest(prompt="hi", max_tokens=21), args, mixes)
    assert to_api_error(err.value).status == 400
    with pytest.raises(Exception, match="serves 'lerpray'") as err:
        generation_request(CompletionRequest(prompt="hi", model="other"), args, mixes)
    assert to_api_error(err.value).status == 404


def test_extrapolation_disabled_by_the_operator():
    extrapolating = CompletionRequest(prompt="hi", interpolation={"alpha": {"s": 1.5}, "extrapolate": True})
    allowed = ServeArgs(anchors="x")
    assert generation_request(extrapolating, allowed, mix_context(allowed, LAYOUT)).coeffs == (1.5, -0.5)
    with pytest.raises(MixError, match="does not allow extrapolation"):
        generation_request(extrapolating, ServeArgs(anchors="x", extrapolation=None),
                           mix_context(ServeArgs(anchors="x", extrapolation=None), LAYOUT))


def test_reply_builds_chunks_and_response():
    reply = Reply("chat", [GenerationRequest((0.25, 0.75), messages=[], request_id="abc")], "lerpray", LAYOUT.anchors)
    assert reply.opening_chunks()[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert reply.add(TokenEvent("abc", 5, "", None, 3, 1)) is None  # text held back: nothing to send
    chunk = reply.add(TokenEvent("abc", 6, "hi", "stop", 3, 2))
    assert chunk["choices"][0] == {"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": "stop"}
    body = reply.response()
    assert body["id"] == "chatcmpl-abc" and body["choices"][0]["message"]["content"] == "hi"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert body["interpolation"] == {"s.pos": 0.25, "s.neg": 0.75}


# ---- the Serve config and the CLI's merge --------------------------------------------------------------------


def test_shipped_serve_config_is_valid():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())
    (app,) = ServeDeploySchema.model_validate(config).applications
    assert app.import_path == APP_IMPORT_PATH
    ServeArgs.model_validate(app.args)
    (deployment,) = app.deployments
    assert deployment.name == "LerpServer" and deployment.autoscaling_config["max_replicas"] >= 2


def test_cli_flags_override_the_config(tmp_path):
    config = yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())
    merged = serve_config(config, anchors=str(tmp_path), host=None, port=9123)
    assert merged["http_options"] == {"host": "127.0.0.1", "port": 9123}
    assert merged["applications"][0]["args"]["anchors"] == str(tmp_path)
    assert config["applications"][0]["args"]["anchors"] != str(tmp_path)  # the input is not modified
    minimal = serve_config(None, anchors="s3://bucket/set", host="0.0.0.0", port=None)
    assert minimal["applications"][0]["args"] == {"anchors": "s3://bucket/set"}
    assert minimal["http_options"] == {"host": "0.0.0.0", "port": 8000}
    with pytest.raises(ValueError, match="--anchors"):
        serve_config(None, anchors=None, host=None, port=None)


# ---- the batcher ----------------------------------------------------------------------------------------------


class ScriptedEngine:
    """The engine's step API; every request emits max_tokens events, one per step. A step runs only when the test
    releases a permit; a prompt "bad" is refused by add(), "boom" makes the next step raise."""

    def __init__(self) -> None:
        self.rows: dict[str, list] = {}
        self.steps: list[list[str]] = []  # prompts of the rows in each step
        self.aborted: list[str] = []
        self.permits = threading.Semaphore(0)

    def add(self, request) -> None:
        if request.prompt == "bad":
            raise EngineError("bad prompt")
        self.rows[request.request_id] = [request, 0]

    def has_work(self) -> bool:
        return bool(self.rows)

    def abort(self, request_id: str) -> bool:
        self.aborted.append(request_id)
        return self.rows.pop(request_id, None) is not None

    def step(self) -> list[TokenEvent]:
        assert self.permits.acquire(timeout=10), "test never released a step"
        self.steps.append([r.prompt for r, _ in self.rows.values()])
        if any(r.prompt == "boom" for r, _ in self.rows.values()):
            raise RuntimeError("engine exploded")
        events = []
        for rid, row in list(self.rows.items()):
            row[1] += 1
            done = row[1] >= row[0].sampling.max_tokens
            events.append(TokenEvent(rid, row[1], f"{row[0].prompt}{row[1]} ", "length" if done else None, 1, row[1]))
            if done:
                del self.rows[rid]
        return events

    def release(self, n: int = 50) -> None:
        for _ in range(n):
            self.permits.release()


def req(prompt: str, max_tokens: int = 4):
    from lerpray.model import GenerationRequest, SamplingParams

    return GenerationRequest(coeffs=(1.0, 0.0), prompt=prompt, sampling=SamplingParams(max_tokens=max_tokens))


async def collect(stream) -> str:
    return "".join([e.text async for batch in stream for e in batch])


async def take(stream, n: int) -> list[str]:
    """The texts of the next n events (the batcher hands over events in lists)."""
    texts: list[str] = []
    while len(texts) < n:
        texts += [e.text for e in await anext(stream)]
    return texts


class PagingEngine(ScriptedEngine):
    """As an engine that pages anchor sets (lerpray.model.paged_engine): a prompt starting "x" (another set) is not
    `ready` while a row of prompt "a" runs (its set holds the slots)."""

    def ready(self, request) -> bool:
        return not (request.prompt.startswith("x") and any(r.prompt == "a" for r, _ in self.rows.values()))


def run_batcher(test, engine_class=ScriptedEngine, **kw):
    engine = engine_class()
    batcher = Batcher(engine, **{"max_batch_size": 4, "max_queue": 4, **kw})
    batcher.start()
    try:
        asyncio.run(asyncio.wait_for(test(engine, batcher), timeout=20))
    finally:
        batcher.close()
        engine.release()
    return engine, batcher


def test_new_requests_join_a_running_batch():
    async def test(engine, batcher):
        first = batcher.submit(req("a", max_tokens=6))
        engine.release(2)
        assert await take(first, 2) == ["a1 ", "a2 "]
        second = asyncio.create_task(collect(batcher.submit(req("b", max_tokens=3))))
        await asyncio.sleep(0)  # the task starts and queues b; the engine thread is held inside a's third step
        engine.release()
        assert await collect(first) == "a3 a4 a5 a6 "
        assert await second == "b1 b2 b3 "

    engine, _ = run_batcher(test)
    assert ["a", "b"] in engine.steps  # b joined while a was still decoding


def test_full_queue_refuses_at_once_and_recovers():
    async def test(engine, batcher):
        running = batcher.submit(req("a"))
        engine.release(1)
        assert await take(running, 1) == ["a1 "]  # a holds the only batch slot
        waiting = asyncio.create_task(collect(batcher.submit(req("b"))))
        await asyncio.sleep(0)  # the task starts and b takes the only queue place
        with pytest.raises(QueueFullError):
            await anext(batcher.submit(req("c")))
        engine.release()
        assert await collect(running) == "a2 a3 a4 "
        assert await waiting == "b1 b2 b3 b4 "
        assert await collect(batcher.submit(req("d", max_tokens=1))) == "d1 "

    run_batcher(test, max_batch_size=1, max_queue=1)


def test_a_client_going_away_frees_its_slot():
    async def test(engine, batcher):
        gone = batcher.submit(req("a", max_tokens=50))
        engine.release(1)
        assert await take(gone, 1) == ["a1 "]
        await gone.aclose()
        engine.release()
        assert await collect(batcher.submit(req("b", max_tokens=2))) == "b1 b2 "

    engine, _ = run_batcher(test, max_batch_size=1, max_queue=0)
    assert len(engine.aborted) == 1
    assert not any("a" in step for step in engine.steps[2:])


def test_a_refused_request_does_not_disturb_the_batch():
    async def test(engine, batcher):
        good = asyncio.create_task(collect(batcher.submit(req("a", max_tokens=2))))
        with pytest.raises(EngineError, match="bad prompt"):
            await anext(batcher.submit(req("bad")))
        engine.release()
        assert await good == "a1 a2 "
        assert batcher.healthy() is None

    run_batcher(test)


def test_an_engine_failure_fails_requests_and_marks_unhealthy():
    async def test(engine, batcher):
        stream = batcher.submit(req("boom"))
        engine.release()
        with pytest.raises(RuntimeError, match="exploded"):
            await anext(stream)
        assert "engine step failed" in batcher.healthy()
        with pytest.raises(RuntimeError, match="restarting"):
            await anext(batcher.submit(req("a")))

    run_batcher(test)


def test_a_request_the_engine_is_not_ready_for_waits_at_the_head_of_the_queue_and_nothing_fails():
    async def test(engine, batcher):
        running = batcher.submit(req("a", max_tokens=3))
        engine.release(1)
        assert await take(running, 1) == ["a1 "]
        later = [asyncio.create_task(collect(batcher.submit(req(p, max_tokens=2)))) for p in ("x", "b", "x2")]
        await asyncio.sleep(0.05)  # queued while a runs: x waits for a's set, b and x2 wait behind it (in order)
        engine.release()
        assert await collect(running) == "a2 a3 "
        assert [await t for t in later] == ["x1 x2 ", "b1 b2 ", "x21 x22 "]

    engine, _ = run_batcher(test, PagingEngine)
    joined = next(i for i, step in enumerate(engine.steps) if "x" in step)
    assert engine.steps[joined] == ["x", "b", "x2"] and all("a" not in step for step in engine.steps[joined:])

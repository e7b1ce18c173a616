"""Replies with n choices per prompt, log probabilities and echo: OpenAI's shapes, checked with the installed openai
client's own response types; and the batcher's handling of n choices and several requests per HTTP request."""

from __future__ import annotations

import asyncio

import pytest
from openai._models import construct_type
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from lerpray.model import GenerationRequest, SamplingParams, TokenEvent
from lerpray.serve.batcher import Batcher
from lerpray.serve.replies import Reply, TokenText
from lerpray.testing import tiny_tokenizer

pytestmark = pytest.mark.unit

ANCHORS = ("s.pos", "s.neg")


def request(rid: str, n: int = 1, logprobs: int | None = None, prompt: str | None = "Hi", **kw) -> GenerationRequest:
    sampling = SamplingParams(logprobs=logprobs, **kw)
    messages = None if prompt is not None else [{"role": "user", "content": "x"}]
    return GenerationRequest((0.5, 0.5), prompt=prompt, messages=messages, sampling=sampling, request_id=rid, n=n)


def event(rid: str, token: int, text: str, finish=None, index=0, generated=1, lp=None, top=None, prompt=None):
    return TokenEvent(rid, token, text, finish, 2, generated, index, lp, top, prompt)


def parsed_echo(body: dict) -> Completion:
    """How the openai client parses a completion (leniently, `construct_type`, unless strict validation is on).
    An echoed prompt's first token has null logprobs, as OpenAI's and vLLM's, outside the client's strict types
    (`token_logprobs: List[float]`): everything after it must pass them."""
    for choice in body["choices"]:
        rest = {k: v[1:] for k, v in choice["logprobs"].items()}
        Completion.model_validate({**body, "choices": [{**choice, "logprobs": rest}]})
    return construct_type(type_=Completion, value=body)


def test_choices_are_prompt_major_with_summed_usage():
    reply = Reply("completions", [request("a", n=2), request("b", n=2)], "lerpray", ANCHORS)
    for rid, index, text in (("b", 1, "b1"), ("a", 0, "a0"), ("b", 0, "b0"), ("a", 1, "a1")):
        chunk = reply.add(event(rid, 5, text, "length", index))
        assert chunk["choices"][0]["index"] == {"a": 0, "b": 2}[rid] + index
    body = Completion.model_validate(reply.response())
    assert [(c.index, c.text) for c in body.choices] == [(0, "a0"), (1, "a1"), (2, "b0"), (3, "b1")]
    assert (body.usage.prompt_tokens, body.usage.completion_tokens) == (4, 4)  # each prompt counted once


def test_completion_logprobs_with_echo():
    tokens = TokenText(tiny_tokenizer())
    first, second = tokens.text(82)[0], tokens.text(113)[0]  # "O", "n"
    prompt = [(82, None, []), (113, -1.5, [(113, -1.5), (99, -2.0)])]
    reply = Reply("completions", [request("a", logprobs=2, prompt="On")], "lerpray", ANCHORS, echo=True, tokens=tokens)
    chunk = reply.add(event("a", 104, "e", lp=-0.25, top=[(104, -0.25), (35, -3.0)], prompt=prompt))
    assert chunk["choices"][0]["text"] == "One"
    reply.add(event("a", 35, " ", "length", generated=2, lp=-1e9, top=[(35, -1e9)]))
    logprobs = parsed_echo(reply.response()).choices[0].logprobs
    assert logprobs.tokens == [first, second, "e", " "]
    assert logprobs.token_logprobs == [None, -1.5, -0.25, -9999.0]  # JSON has no -inf: OpenAI's floor
    assert logprobs.top_logprobs[0] is None and logprobs.top_logprobs[1] == {"n": -1.5, "`": -2.0}
    assert logprobs.text_offset == [0, 1, 2, 3]


def test_scoring_only_reply_has_the_prompt_alone():
    prompt = [(82, None, []), (113, -1.5, [])]
    reply = Reply("completions", [request("a", logprobs=0, prompt="On", max_tokens=0, prompt_logprobs=0)], "lerpray",
                  ANCHORS, echo=True, tokens=TokenText(tiny_tokenizer()))  # fmt: skip
    reply.add(event("a", -1, "", "length", generated=0, prompt=prompt))
    choice = parsed_echo(reply.response()).choices[0]
    assert (choice.text, choice.logprobs.token_logprobs, choice.logprobs.top_logprobs) == ("On", [None, -1.5], [None, {}])


def test_chat_logprobs_in_chunks_and_response():
    tokens = TokenText(tiny_tokenizer())
    reply = Reply("chat", [request("a", n=2, logprobs=1, prompt=None)], "lerpray", ANCHORS, tokens=tokens)
    opening = ChatCompletionChunk.model_validate(reply.opening_chunks()[0])
    assert [c.index for c in opening.choices] == [0, 1]
    held = reply.add(event("a", 198, "", index=1, lp=-0.5, top=[(198, -0.5)]))  # part of "é": no text yet
    chunk = ChatCompletionChunk.model_validate(held)
    assert chunk.choices[0].index == 1 and chunk.choices[0].delta.content is None
    assert chunk.choices[0].logprobs.content[0].bytes is None  # a character's first byte is not text
    reply.add(event("a", 172, "é", "stop", index=1, generated=2, lp=-0.1, top=[(172, -0.1)]))
    reply.add(event("a", 104, "e", "stop", lp=-0.2, top=[(104, -0.2)]))
    body = ChatCompletion.model_validate(reply.response())
    first = body.choices[0].logprobs.content[0]
    assert (first.token, first.logprob, first.bytes) == ("e", -0.2, [101])
    assert [t.token for t in first.top_logprobs] == ["e"]
    assert body.choices[1].message.content == "é" and len(body.choices[1].logprobs.content) == 2


def test_no_logprobs_object_unless_asked():
    reply = Reply("chat", [request("a", prompt=None)], "lerpray", ANCHORS)
    reply.add(event("a", 5, "x", "stop", lp=-1.0))
    assert reply.response()["choices"][0]["logprobs"] is None


class ChoicesEngine:
    """Each request's choices emit one event per step; choice i finishes after i + 1 tokens."""

    def __init__(self) -> None:
        self.rows: dict[str, list] = {}
        self.steps: list[int] = []  # running choices per step

    def add(self, request) -> None:
        self.rows[request.request_id] = [request, 0]

    def has_work(self) -> bool:
        return bool(self.rows)

    def abort(self, request_id: str) -> bool:
        return self.rows.pop(request_id, None) is not None

    def step(self) -> list[TokenEvent]:
        events = []
        self.steps.append(sum(r.n - done for r, done in self.rows.values()))  # choices still running
        for rid, row in list(self.rows.items()):
            row[1] += 1
            for i in range(row[0].n):
                if row[1] <= i + 1:
                    events.append(event(rid, 1, f"{rid}{i}", "stop" if row[1] == i + 1 else None, i, row[1]))
            if row[1] >= row[0].n:
                del self.rows[rid]
        return events


def test_batcher_streams_every_choice_of_every_request():
    engine = ChoicesEngine()
    batcher = Batcher(engine, max_batch_size=4, max_queue=4)
    batcher.start()

    async def run() -> list[TokenEvent]:
        return [e async for batch in batcher.submit(request("a", n=3), request("b", n=2)) for e in batch]

    try:
        events = asyncio.run(asyncio.wait_for(run(), timeout=20))
    finally:
        batcher.close()
    finished = sorted((e.request_id, e.index) for e in events if e.finish_reason)
    assert finished == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    assert max(engine.steps) <= 4  # b's two choices wait until a's three leave room

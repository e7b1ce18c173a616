"""n choices, lists of prompts, log probabilities, echo scoring, penalties and logit_bias over HTTP, on a real Ray
Serve app with the tiny anchor set: every reply equals what the in-process `Engine` computes for the same request
(same mix, seed and parameters), and the openai client parses every shape."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai._models import construct_type

from lerpray.mixing import resolve_mix
from lerpray.model import Engine, GenerationRequest, SamplingParams

from .app import KEY, MIX

pytestmark = pytest.mark.integration

PROMPT = "Once upon a time"
TOL = 1e-4  # logprobs: the server's batch shapes differ from the in-process run's (float rounding only)


def run_local(engine: Engine, *, prompt=PROMPT, messages=None, n=1, **sampling) -> dict[int, dict]:
    """index -> {"text", "logprobs", "top", "prompt"} of the in-process engine for the same request."""
    sampling = {"max_tokens": 12, "seed": 7, **sampling}
    request = GenerationRequest(coeffs=resolve_mix(MIX, engine.layout), prompt=None if messages else prompt,
                                messages=messages, sampling=SamplingParams(**sampling), n=n)  # fmt: skip
    out: dict[int, dict] = {}
    for event in engine.stream([request]):
        choice = out.setdefault(event.index, {"text": "", "logprobs": [], "top": [], "prompt": None})
        choice["text"] += event.text
        if event.logprob is not None:
            choice["logprobs"].append(event.logprob)
            choice["top"].append(event.top_logprobs)
        choice["prompt"] = choice["prompt"] or event.prompt_logprobs
    return out


def post(http: httpx.Client, path: str, **body) -> dict:
    response = http.post(path, json={"max_tokens": 12, "seed": 7, "interpolation": MIX, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_n_choices_are_the_single_requests_with_seed_plus_index(http, engine):
    body = post(http, "/v1/completions", prompt=PROMPT, n=2)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    texts = [c["text"] for c in body["choices"]]
    assert texts == [run_local(engine, seed=7)[0]["text"], run_local(engine, seed=8)[0]["text"]]
    assert texts[0] != texts[1]
    assert body["usage"]["prompt_tokens"] == post(http, "/v1/completions", prompt=PROMPT)["usage"]["prompt_tokens"]
    messages = [{"role": "user", "content": "Tell me about cats."}]
    chat = post(http, "/v1/chat/completions", messages=messages, n=2, seed=3)
    expected = [run_local(engine, messages=messages, seed=s)[0]["text"] for s in (3, 4)]
    assert [c["message"]["content"] for c in chat["choices"]] == expected


def test_a_list_of_prompts_gives_n_choices_per_prompt_in_order(http, engine):
    prompts = [PROMPT, "The weather today"]
    body = post(http, "/v1/completions", prompt=prompts, n=2)
    expected = [run_local(engine, prompt=p, seed=7 + i)[0]["text"] for p in prompts for i in range(2)]
    assert [(c["index"], c["text"]) for c in body["choices"]] == list(enumerate(expected))


def test_completion_logprobs_equal_the_engine(http, engine):
    body = post(http, "/v1/completions", prompt=PROMPT, logprobs=3)
    logprobs = openai.types.Completion.model_validate(body).choices[0].logprobs
    local = run_local(engine, logprobs=3)[0]
    assert logprobs.token_logprobs == pytest.approx(local["logprobs"], abs=TOL)
    assert [len(top) for top in logprobs.top_logprobs] == [3] * len(local["top"])  # distinct byte tokens here
    for shown, expected in zip(logprobs.top_logprobs, local["top"], strict=True):
        assert sorted(shown.values(), reverse=True) == pytest.approx([lp for _, lp in expected], abs=TOL)
    assert len(logprobs.tokens) == len(logprobs.text_offset) == len(local["logprobs"])
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)


def test_chat_logprobs_equal_the_engine(http, engine):
    messages = [{"role": "user", "content": "Hello"}]
    body = post(http, "/v1/chat/completions", messages=messages, logprobs=True, top_logprobs=2)
    content = openai.types.chat.ChatCompletion.model_validate(body).choices[0].logprobs.content
    local = run_local(engine, messages=messages, logprobs=2)[0]
    assert [t.logprob for t in content] == pytest.approx(local["logprobs"], abs=TOL)
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob - TOL for t in content)


def test_echo_scores_the_prompt_under_the_mix(http, engine):
    body = post(http, "/v1/completions", prompt=PROMPT, echo=True, max_tokens=0, logprobs=0)
    choice = body["choices"][0]
    assert (choice["text"], choice["finish_reason"], body["usage"]["completion_tokens"]) == (PROMPT, "length", 0)
    local = run_local(engine, max_tokens=0, prompt_logprobs=0)[0]["prompt"]
    assert choice["logprobs"]["token_logprobs"][0] is None
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx([lp for _, lp, _ in local[1:]], abs=TOL)
    assert "".join(choice["logprobs"]["tokens"]) == PROMPT
    other = post(http, "/v1/completions", prompt=PROMPT, echo=True, max_tokens=0, logprobs=0,
                 interpolation={"alpha": {"sentiment": 0.0}})  # fmt: skip
    assert other["choices"][0]["logprobs"]["token_logprobs"] != choice["logprobs"]["token_logprobs"]
    with_completion = post(http, "/v1/completions", prompt=PROMPT, echo=True, logprobs=1)
    text = with_completion["choices"][0]["text"]
    assert text == PROMPT + run_local(engine)[0]["text"]
    assert len(with_completion["choices"][0]["logprobs"]["tokens"]) == len(local) + 12


def test_penalties_and_logit_bias_change_the_output_as_in_process(http, engine):
    plain = post(http, "/v1/completions", prompt=PROMPT, temperature=0)["choices"][0]["text"]
    shaped = {"presence_penalty": 1.5, "frequency_penalty": 1.0, "logit_bias": {"104": 5.0}}  # 104: "e" (ByT5)
    body = post(http, "/v1/completions", prompt=PROMPT, temperature=0, **shaped)
    expected = run_local(engine, temperature=0, presence_penalty=1.5, frequency_penalty=1.0, logit_bias={104: 5.0})
    assert body["choices"][0]["text"] == expected[0]["text"] != plain
    forced = post(http, "/v1/completions", prompt=PROMPT, temperature=0, logit_bias={"104": 100})
    assert forced["choices"][0]["text"] == "e" * 12
    response = http.post("/v1/completions", json={"prompt": PROMPT, "logit_bias": {"99999": 1}})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "logit_bias.99999")


def test_streamed_choices_and_logprobs_equal_the_whole_reply(http):
    body = {"prompt": PROMPT, "n": 2, "logprobs": 2, "max_tokens": 12, "seed": 7, "interpolation": MIX}
    whole = post(http, "/v1/completions", **body)
    texts, token_logprobs = {0: "", 1: ""}, {0: [], 1: []}
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert lines[-1] == "[DONE]"
    for line in lines[:-1]:
        # Completion chunks are `Completion`s whose unfinished choices have finish_reason null: outside the strict
        # type, as OpenAI's own; the client parses them leniently (construct_type), as here.
        chunk = construct_type(type_=openai.types.Completion, value=json.loads(line))
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            token_logprobs[choice.index] += choice.logprobs.token_logprobs if choice.logprobs else []
    for c in whole["choices"]:
        assert texts[c["index"]] == c["text"]
        assert token_logprobs[c["index"]] == c["logprobs"]["token_logprobs"]


def test_openai_client_calls_from_the_issue(base_url, engine):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    mix = {"extra_body": {"interpolation": MIX}}
    two = client.completions.create(model="lerpray", prompt=PROMPT, n=2, max_tokens=8, seed=7, **mix)
    assert [c.index for c in two.choices] == [0, 1]
    scored = client.completions.create(model="lerpray", prompt=PROMPT, echo=True, max_tokens=0, logprobs=0, **mix)
    assert scored.choices[0].text == PROMPT and scored.choices[0].logprobs.token_logprobs[0] is None
    one = client.completions.create(model="lerpray", prompt=[PROMPT, "Hi"], logprobs=1, max_tokens=4, **mix)
    assert len(one.choices) == 2 and all(len(c.logprobs.top_logprobs[0]) == 1 for c in one.choices)
    messages = [{"role": "user", "content": "Hello"}]
    chat = client.chat.completions.create(model="lerpray", messages=messages, logprobs=True, top_logprobs=3, n=2,
                                          presence_penalty=0.5, frequency_penalty=0.5, max_tokens=6, **mix)  # fmt: skip
    assert len(chat.choices) == 2 and len(chat.choices[1].logprobs.content[0].top_logprobs) == 3
    stream = client.chat.completions.create(model="lerpray", messages=messages, logprobs=True, n=2, max_tokens=6,
                                            stream=True, seed=3, **mix)  # fmt: skip
    streamed: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    expected = [run_local(engine, messages=messages, seed=s, max_tokens=6)[0]["text"] for s in (3, 4)]
    assert [streamed[0], streamed[1]] == expected


def test_perplexity_over_http_equals_in_process(base_url, engine):
    from lerpray.eval.perplexity import http_perplexities, perplexities

    texts = ["The film was wonderful and warm.", "Dear sir, I write to complain.", "ok"]
    mixes = {"mix": resolve_mix(MIX, engine.layout)}
    local = perplexities(engine.imodel, engine.tokenizer, texts, mixes, max_length=16)
    served = http_perplexities(base_url, texts, {"mix": MIX}, max_length=16, api_key=KEY)
    assert served["mix"] == pytest.approx(local["mix"], rel=1e-4)

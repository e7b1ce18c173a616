"""OpenAI protocol -> engine: parsed requests become `GenerationRequest`s (token events become replies in
`lerpray.serve.replies`).

Pure (no Ray, no HTTP, no I/O): the deployment calls these; the rules that can refuse a request (the served model
id, max_tokens cap, n, the mix) are checked here and raise the errors `lerpray.serve.errors` maps. The request's mix is resolved once,
by `lerpray.steering.resolve` (its `interpolation` if it has one, else its model id's), against the `MixContext`
its set built when it loaded (`mix_context`: the set's layout, policy, calibration and resolved presets).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import TypeVar

from lerpray.eval.steer import steerer
from lerpray.feedback import Steerer
from lerpray.mixing import AnchorLayout
from lerpray.model.requests import GenerationRequest
from lerpray.model.sampling import SamplingParams
from lerpray.serve import errors
from lerpray.serve.config import ServeArgs
from lerpray.serve.schemas import ChatCompletionRequest, CompletionRequest
from lerpray.steering import MixContext, ResolvedMix, resolve, resolve_presets
from lerpray.targets import Calibration, reply_min_tokens

__all__ = ["generation_request", "generation_requests", "mix_context", "pick", "sampling_params"]

Served = TypeVar("Served")  # a lerpray.serve.live.LiveSet (anything with `.args`: its ServeArgs)


def pick(sets: Mapping[str, Served], model: str | None) -> Served:
    """The set a request's `model` names: its id, one of the main set's presets, or `<id>:<inline mix>`; 404 else."""
    main = next(iter(sets.values()))
    if model is None or model in sets:
        return sets[model] if model else main
    if model in main.args.presets:
        return main
    for name, served in sets.items():
        if model.startswith(f"{name}:"):
            return served
    others = [*main.args.presets, *list(sets)[1:]]
    raise errors.unknown_model(model, main.args.model_name, others)


def mix_context(args: ServeArgs, layout: AnchorLayout, calibration: Calibration | None = None,
                calibration_problem: str | None = None,
                engine_block: tuple[int, int] | str | None = None) -> MixContext:  # fmt: skip
    """What a set's requests resolve against, presets resolved (a ValueError naming the preset if one does not fit);
    `engine_block` (offset, width) when the set shares an engine with other sets, its name in a paged engine."""
    context = MixContext(layout, args.bounds(), calibration, calibration_problem, args.model_name,
                         engine_block=engine_block)  # fmt: skip
    presets = resolve_presets(args.presets, context)
    return replace(context, presets=presets)


def generation_requests(
    parsed: CompletionRequest | ChatCompletionRequest, args: ServeArgs, mixes: MixContext, vocab_size: int | None = None,
) -> list[GenerationRequest]:
    """One engine request per prompt (chat: one), each with the request's n choices, in prompt order."""
    first = generation_request(parsed, args, mixes, vocab_size)
    if isinstance(parsed, ChatCompletionRequest):
        return [first]
    prompts = parsed.prompt_texts()
    if len(prompts) > args.max_batch_size + args.max_queue:
        raise _invalid("prompt", f"{len(prompts)} prompts in one request, more than this server holds at once "
                                 f"({args.max_batch_size + args.max_queue}); send fewer per request")
    return [first, *(replace(first, prompt=p, request_id=uuid.uuid4().hex, steer=_steer(first.mix, mixes))
                     for p in prompts[1:])]  # fmt: skip


def generation_request(
    parsed: CompletionRequest | ChatCompletionRequest, args: ServeArgs, mixes: MixContext, vocab_size: int | None = None,
) -> GenerationRequest:
    """Check a parsed request against the server's policy and turn it into an engine request (a completion's
    first prompt; `generation_requests` gives one per prompt)."""
    max_tokens = args.default_max_tokens if parsed.max_tokens is None else parsed.max_tokens
    if max_tokens > args.max_tokens_cap:
        raise errors.max_tokens_over_cap(max_tokens, args.max_tokens_cap)
    mix = resolve(mixes, model=parsed.model, interpolation=parsed.interpolation, max_tokens=max_tokens)
    if isinstance(mixes.engine_block, tuple):  # the set's [K] placed in the shared engine's row, zeros elsewhere
        mix = mix.embed(*mixes.engine_block)
    paged = mixes.engine_block if isinstance(mixes.engine_block, str) else None  # the engine places it (paging)
    min_tokens = reply_min_tokens(mix.report, parsed.min_tokens, max_tokens)  # a target's: its calibration's
    sampling, n = sampling_params(parsed, max_tokens, vocab_size, min_tokens), parsed.n or 1
    if n > args.max_batch_size:
        raise _invalid("n", f"is {n}, more choices than this server runs at once ({args.max_batch_size}); ask for "
                            f"at most {args.max_batch_size}")
    text = ({"messages": [m.as_template_message() for m in parsed.messages]}
            if isinstance(parsed, ChatCompletionRequest) else {"prompt": parsed.prompt_texts()[0]})  # fmt: skip
    return GenerationRequest(mix=mix, sampling=sampling, request_id=uuid.uuid4().hex, n=n, steer=_steer(mix, mixes),
                             anchor_set=paged, **text)  # fmt: skip


def _steer(mix: ResolvedMix, mixes: MixContext) -> Steerer | None:
    """A closed-loop mix's own Steerer (one per engine request: each keeps its choices' loop states)."""
    return None if mix.feedback is None else steerer(mix.feedback, mixes.layout)


def sampling_params(
    parsed: CompletionRequest | ChatCompletionRequest, max_tokens: int, vocab_size: int | None, min_tokens: int
) -> SamplingParams:
    """The engine's sampling parameters of a request (n, logprobs and echo in OpenAI's per-endpoint forms); a 400
    naming the field for a combination OpenAI's API also refuses. `min_tokens`: the reply's (targets.reply_min_tokens:
    the request's, else a target's calibration's)."""
    if isinstance(parsed, ChatCompletionRequest):
        if max_tokens == 0:
            raise _invalid("max_tokens", "must be at least 1 in chat (/v1/completions with echo: true scores a text)")
        if parsed.top_logprobs and not parsed.logprobs:
            raise _invalid("top_logprobs", "needs logprobs: true; set it or remove top_logprobs")
        logprobs, prompt_logprobs = (parsed.top_logprobs or 0) if parsed.logprobs else None, None
    else:
        if max_tokens == 0 and not parsed.echo:
            raise _invalid("max_tokens", "is 0, which only scores the prompt: set echo: true (and logprobs) too")
        if parsed.best_of is not None and parsed.best_of != (parsed.n or 1):
            raise _invalid("best_of", f"is {parsed.best_of} but n is {parsed.n or 1}: this server returns every "
                                      "candidate it generates, so set best_of equal to n (or remove it)")
        logprobs = parsed.logprobs
        scores_prompt = parsed.echo and (logprobs is not None or max_tokens == 0)
        prompt_logprobs = (logprobs or 0) if scores_prompt else None
    if (parsed.min_tokens or 0) > max_tokens:
        raise _invalid("min_tokens", f"is {parsed.min_tokens} but max_tokens is {max_tokens}: lower min_tokens or "
                                     "raise max_tokens")
    bias = parsed.logit_bias_pairs()
    if vocab_size is not None and (over := [t for t, _ in bias if t >= vocab_size]):
        raise _invalid(f"logit_bias.{over[0]}", f"token id {over[0]} is not in the vocabulary (ids 0 to "
                                                f"{vocab_size - 1}); use ids of this model's tokenizer")
    return SamplingParams(
        temperature=1.0 if parsed.temperature is None else parsed.temperature,
        top_p=1.0 if parsed.top_p is None else parsed.top_p,
        top_k=parsed.top_k or 0,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        stop=parsed.stop_strings(),
        seed=parsed.seed,
        presence_penalty=parsed.presence_penalty or 0.0,
        frequency_penalty=parsed.frequency_penalty or 0.0,
        logit_bias=bias,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


def _invalid(param: str, message: str) -> errors.ApiError:
    return errors.ApiError(400, f"{param}: {message}", param=param, code="invalid_value")

"""OpenAI protocol -> engine: parsed requests become `GenerationRequest`s (token events become replies in
`lerpray.serve.replies`).

Pure (no Ray, no HTTP): the deployment calls these; the rules that can refuse a request (served model id,
max_tokens cap, the mix) are checked here and raise the errors `lerpray.serve.errors` maps. A request's mix is its
`interpolation` if it has one, else its model id's: a preset's, an inline mix's (lerpray/serve/model_ids.py), or the
centre of the anchors' hull for the served id itself.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from lerpray.mixing import AnchorLayout, MixError, default_mix, resolve_mix
from lerpray.model.requests import GenerationRequest
from lerpray.model.sampling import SamplingParams
from lerpray.serve import errors, model_ids
from lerpray.serve.config import ServeArgs
from lerpray.serve.responses import ModelCard
from lerpray.serve.schemas import ChatCompletionRequest, CompletionRequest
from lerpray.serve.steer import request_steering, schedule_of
from lerpray.targets import Calibration

__all__ = ["generation_request", "generation_requests", "model_cards", "preset_coeffs", "sampling_params"]


def generation_requests(
    parsed: CompletionRequest | ChatCompletionRequest, args: ServeArgs, layout: AnchorLayout, vocab_size: int | None = None,
    calibration: Calibration | None = None,  # default: the set's own, loaded when a target needs it
) -> list[GenerationRequest]:
    """One engine request per prompt (chat: one), each with the request's n choices, in prompt order."""
    first = generation_request(parsed, args, layout, vocab_size, calibration)
    if isinstance(parsed, ChatCompletionRequest):
        return [first]
    prompts = parsed.prompt_texts()
    if len(prompts) > args.max_batch_size + args.max_queue:
        raise _invalid("prompt", f"{len(prompts)} prompts in one request, more than this server holds at once "
                                 f"({args.max_batch_size + args.max_queue}); send fewer per request")
    return [first, *(replace(first, prompt=p, request_id=uuid.uuid4().hex) for p in prompts[1:])]


def generation_request(
    parsed: CompletionRequest | ChatCompletionRequest, args: ServeArgs, layout: AnchorLayout, vocab_size: int | None = None,
    calibration: Calibration | None = None,
) -> GenerationRequest:
    """Check a parsed request against the server's policy and turn it into an engine request (a completion's
    first prompt; `generation_requests` gives one per prompt)."""
    coeffs = model_coeffs(parsed.model, args, layout)  # [K]; also checks the model id when `interpolation` is given
    max_tokens = args.default_max_tokens if parsed.max_tokens is None else parsed.max_tokens
    if max_tokens > args.max_tokens_cap:
        raise errors.max_tokens_over_cap(max_tokens, args.max_tokens_cap)
    steering = request_steering(parsed, args, layout, max_tokens, calibration)  # schedules and targets: steer.py
    coeffs, schedule = steering.coeffs, schedule_of(steering)  # the body's mix overrides the model id's
    sampling, n = sampling_params(parsed, max_tokens, vocab_size), parsed.n or 1
    if n > args.max_batch_size:
        raise _invalid("n", f"is {n}, more choices than this server runs at once ({args.max_batch_size}); ask for "
                            f"at most {args.max_batch_size}")
    request_id = uuid.uuid4().hex
    if isinstance(parsed, ChatCompletionRequest):
        messages = [m.as_template_message() for m in parsed.messages]
        return GenerationRequest(coeffs=coeffs, messages=messages, sampling=sampling, request_id=request_id, n=n,
                                 schedule=schedule, resolved_mix=steering.resolved)
    return GenerationRequest(coeffs=coeffs, prompt=parsed.prompt_texts()[0], sampling=sampling, request_id=request_id,
                             n=n, schedule=schedule, resolved_mix=steering.resolved)


def sampling_params(
    parsed: CompletionRequest | ChatCompletionRequest, max_tokens: int, vocab_size: int | None = None
) -> SamplingParams:
    """The engine's sampling parameters of a request (n, logprobs and echo in OpenAI's per-endpoint forms); a 400
    naming the field for a combination OpenAI's API also refuses."""
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
    bias = parsed.logit_bias_pairs()
    if vocab_size is not None and (over := [t for t, _ in bias if t >= vocab_size]):
        raise _invalid(f"logit_bias.{over[0]}", f"token id {over[0]} is not in the vocabulary (ids 0 to "
                                                f"{vocab_size - 1}); use ids of this model's tokenizer")
    return SamplingParams(
        temperature=1.0 if parsed.temperature is None else parsed.temperature,
        top_p=1.0 if parsed.top_p is None else parsed.top_p,
        top_k=parsed.top_k or 0,
        max_tokens=max_tokens,
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


def model_coeffs(model: str | None, args: ServeArgs, layout: AnchorLayout) -> tuple[float, ...]:
    """The coefficients [K] a model id stands for; 404 for an id this server does not serve."""
    if model is None or model == args.model_name:
        return resolve_mix(default_mix(layout), layout, args.bounds())
    if model in args.presets:
        return resolve_mix(args.presets[model].as_mix(), layout, args.bounds())  # checked at startup
    spec = model_ids.inline_spec(model, args.model_name)
    if spec is None:
        raise errors.unknown_model(model, args.model_name, list(args.presets))
    return model_ids.inline_coeffs(spec, layout, args.bounds())


def preset_coeffs(args: ServeArgs, layout: AnchorLayout) -> dict[str, tuple[float, ...]]:
    """Every preset's coefficients; a ValueError naming the preset and what to change if one does not fit the set."""
    out = {}
    for name, preset in args.presets.items():
        try:
            out[name] = resolve_mix(preset.as_mix(), layout, args.bounds())
        except MixError as err:
            path = err.field.replace("interpolation", f"presets.{name}", 1)
            raise ValueError(f"serve config {path}: {err.message}") from None
    return out


def model_cards(args: ServeArgs, layout: AnchorLayout, context_length: int) -> list[ModelCard]:
    """GET /v1/models' entries: the served id (the anchor set, its attributes and poles, the base model from its
    manifest) and one per preset; `fingerprint` identifies the set's manifest (system_fingerprint of replies)."""
    from lerpray.anchors import MANIFEST_NAME, open_store, read_manifest
    from lerpray.anchors.format import sha256

    store = open_store(args.anchors)
    manifest = read_manifest(store)
    base = manifest.base_model.model_dump(mode="json")
    if args.base_model is not None:
        base["served_from"] = args.base_model
    bounds = args.bounds()
    served = ModelCard(
        id=args.model_name,
        created=int(manifest.created_at.timestamp()),
        base_model=base,
        anchors=list(layout.anchors),
        attributes={a: {"high": p.high, "low": p.low} for a, p in manifest.attributes.items()},
        extrapolation=None if bounds is None else vars(bounds).copy(),
        context_length=context_length,
        max_tokens_cap=args.max_tokens_cap,
        default_max_tokens=args.default_max_tokens,
        fingerprint=f"v{manifest.version}-{sha256(store.read_bytes(MANIFEST_NAME))[:12]}",
    )
    presets = [
        served.model_copy(update={"id": name, "parent": args.model_name, "interpolation": preset.as_mix()})
        for name, preset in args.presets.items()
    ]
    return [served, *presets]

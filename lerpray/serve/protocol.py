"""OpenAI protocol <-> engine: parsed requests become `GenerationRequest`s, token events become responses/chunks.

Pure (no Ray, no HTTP): the deployment calls these; the rules that can refuse a request (served model id,
max_tokens cap, the mix) are checked here and raise the errors `lerpray.serve.errors` maps. A request's mix is its
`interpolation` if it has one, else its model id's: a preset's, an inline mix's (lerpray/serve/model_ids.py), or the
centre of the anchors' hull for the served id itself.
"""

from __future__ import annotations

import time
import uuid

from lerpray.mixing import AnchorLayout, MixError, default_mix, resolve_mix
from lerpray.model.requests import GenerationRequest, TokenEvent
from lerpray.model.sampling import SamplingParams
from lerpray.serve import errors, model_ids
from lerpray.serve.config import ServeArgs
from lerpray.serve.responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionChunk,
    CompletionResponse,
    ModelCard,
    Usage,
)
from lerpray.serve.schemas import ChatCompletionRequest, CompletionRequest
from lerpray.serve.steer import request_steering, schedule_of
from lerpray.targets import Calibration

__all__ = ["Reply", "generation_request", "model_cards", "preset_coeffs"]


def generation_request(
    parsed: CompletionRequest | ChatCompletionRequest,
    args: ServeArgs,
    layout: AnchorLayout,
    calibration: Calibration | None = None,  # default: the set's own, loaded when a target needs it
) -> GenerationRequest:
    """Check a parsed request against the server's policy and turn it into an engine request."""
    coeffs = model_coeffs(parsed.model, args, layout)  # [K]; also checks the model id when `interpolation` is given
    max_tokens = args.default_max_tokens if parsed.max_tokens is None else parsed.max_tokens
    if max_tokens > args.max_tokens_cap:
        raise errors.max_tokens_over_cap(max_tokens, args.max_tokens_cap)
    steering = request_steering(parsed, args, layout, max_tokens, calibration)  # schedules and targets: steer.py
    coeffs, schedule = steering.coeffs, schedule_of(steering)  # the body's mix overrides the model id's
    sampling = SamplingParams(
        temperature=1.0 if parsed.temperature is None else parsed.temperature,
        top_p=1.0 if parsed.top_p is None else parsed.top_p,
        top_k=parsed.top_k or 0,
        max_tokens=max_tokens,
        stop=parsed.stop_strings(),
        seed=parsed.seed,
    )
    request_id = uuid.uuid4().hex
    if isinstance(parsed, ChatCompletionRequest):
        messages = [m.as_template_message() for m in parsed.messages]
        return GenerationRequest(coeffs=coeffs, messages=messages, sampling=sampling, request_id=request_id,
                                 schedule=schedule)
    return GenerationRequest(coeffs=coeffs, prompt=parsed.prompt_text(), sampling=sampling, request_id=request_id,
                             schedule=schedule)


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


class Reply:
    """Accumulates one request's token events into an OpenAI response, or turns each into a stream chunk."""

    def __init__(
        self,
        route: str,
        request_id: str,
        model: str,
        coeffs: tuple[float, ...],
        layout: AnchorLayout,
        fingerprint: str | None = None,
    ):
        self.route = route
        self.chat = route == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + request_id
        self.model = model
        self.fingerprint = fingerprint
        self.created = int(time.time())
        self.mix = dict(zip(layout.anchors, coeffs, strict=True))
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage = Usage.of(0, 0)

    def add(self, event: TokenEvent) -> dict | None:
        """Record an event; returns its stream chunk, or None when it released no text and finished nothing."""
        self.parts.append(event.text)
        self.finish_reason = event.finish_reason
        self.usage = Usage.of(event.prompt_tokens, event.completion_tokens)
        if not event.text and event.finish_reason is None:
            return None
        return self._chunk(event.text, event.finish_reason)

    def opening_chunks(self) -> list[dict]:
        """Chat streams open with the assistant's role, as OpenAI's do."""
        if not self.chat:
            return []
        choice = ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))
        return [ChatCompletionChunk(choices=[choice], **self._common()).model_dump()]

    def usage_chunk(self) -> dict:
        """The last chunk when stream_options.include_usage is set: no choices, the token counts."""
        kind = ChatCompletionChunk if self.chat else CompletionChunk
        return kind(choices=[], usage=self.usage, **self._common()).model_dump()

    def response(self) -> dict:
        text = "".join(self.parts)
        common = {**self._common(), "usage": self.usage, "interpolation": self.mix}
        if self.chat:
            choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=self.finish_reason)
            return ChatCompletionResponse(choices=[choice], **common).model_dump()
        choice = CompletionChoice(text=text, finish_reason=self.finish_reason)
        return CompletionResponse(choices=[choice], **common).model_dump()

    def _chunk(self, text: str, finish_reason: str | None) -> dict:
        if self.chat:
            choices = [ChatChunkChoice(delta=ChatDelta(content=text or None), finish_reason=finish_reason)]
            return ChatCompletionChunk(choices=choices, **self._common()).model_dump()
        choices = [CompletionChoice(text=text, finish_reason=finish_reason)]
        return CompletionChunk(choices=choices, **self._common()).model_dump()

    def _common(self) -> dict:
        return {"id": self.id, "created": self.created, "model": self.model, "system_fingerprint": self.fingerprint}

"""OpenAI protocol <-> engine: parsed requests become `GenerationRequest`s, token events become responses/chunks.

Pure (no Ray, no HTTP): the deployment calls these; the rules that can refuse a request (served model id,
max_tokens cap, the mix) are checked here and raise the errors `lerpray.serve.errors` maps.
"""

from __future__ import annotations

import time
import uuid

from lerpray.mixing import AnchorLayout, default_mix, resolve_mix
from lerpray.model.requests import GenerationRequest, TokenEvent
from lerpray.model.sampling import SamplingParams
from lerpray.serve import errors
from lerpray.serve.config import ServeArgs
from lerpray.serve.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    Usage,
)

__all__ = ["Reply", "generation_request", "model_card"]


def generation_request(
    parsed: CompletionRequest | ChatCompletionRequest, args: ServeArgs, layout: AnchorLayout
) -> GenerationRequest:
    """Check a parsed request against the server's policy and turn it into an engine request."""
    if parsed.model is not None and parsed.model != args.model_name:
        raise errors.unknown_model(parsed.model, args.model_name)
    max_tokens = args.default_max_tokens if parsed.max_tokens is None else parsed.max_tokens
    if max_tokens > args.max_tokens_cap:
        raise errors.max_tokens_over_cap(max_tokens, args.max_tokens_cap)
    mix = default_mix(layout) if parsed.interpolation is None else parsed.interpolation
    coeffs = resolve_mix(mix, layout, args.bounds())  # [K]
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
        return GenerationRequest(coeffs=coeffs, messages=messages, sampling=sampling, request_id=request_id)
    return GenerationRequest(coeffs=coeffs, prompt=parsed.prompt_text(), sampling=sampling, request_id=request_id)


def model_card(args: ServeArgs, layout: AnchorLayout, context_length: int) -> ModelCard:
    """GET /v1/models' entry: the anchor set (attributes, poles) and the base model from its manifest."""
    from lerpray.anchors import open_store, read_manifest

    manifest = read_manifest(open_store(args.anchors))
    base = manifest.base_model.model_dump(mode="json")
    if args.base_model is not None:
        base["served_from"] = args.base_model
    bounds = args.bounds()
    return ModelCard(
        id=args.model_name,
        created=int(manifest.created_at.timestamp()),
        base_model=base,
        anchors=list(layout.anchors),
        attributes={a: {"high": p.high, "low": p.low} for a, p in manifest.attributes.items()},
        extrapolation=None if bounds is None else vars(bounds).copy(),
        context_length=context_length,
    )


class Reply:
    """Accumulates one request's token events into an OpenAI response, or turns each into a stream chunk."""

    def __init__(self, route: str, request_id: str, model: str, coeffs: tuple[float, ...], layout: AnchorLayout):
        self.route = route
        self.chat = route == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + request_id
        self.model = model
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
        return [self._dump(ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice]))]

    def usage_chunk(self) -> dict:
        """The last chunk when stream_options.include_usage is set: no choices, the token counts."""
        kind = ChatCompletionChunk if self.chat else CompletionChunk
        return self._dump(kind(id=self.id, created=self.created, model=self.model, choices=[], usage=self.usage))

    def response(self) -> dict:
        text = "".join(self.parts)
        common = {"id": self.id, "created": self.created, "model": self.model, "usage": self.usage}
        if self.chat:
            choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=self.finish_reason)
            body = ChatCompletionResponse(choices=[choice], interpolation=self.mix, **common)
        else:
            choice = CompletionChoice(text=text, finish_reason=self.finish_reason)
            body = CompletionResponse(choices=[choice], interpolation=self.mix, **common)
        return body.model_dump()

    def _chunk(self, text: str, finish_reason: str | None) -> dict:
        if self.chat:
            delta = ChatDelta(content=text or None)
            choices = [ChatChunkChoice(delta=delta, finish_reason=finish_reason)]
            return self._dump(ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices))
        choices = [CompletionChoice(text=text, finish_reason=finish_reason)]
        return self._dump(CompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices))

    @staticmethod
    def _dump(chunk: ChatCompletionChunk | CompletionChunk) -> dict:
        return chunk.model_dump()

"""Engine token events -> OpenAI replies: whole responses or stream chunks, with n choices per prompt and logprobs.

A reply gathers the events of one HTTP request: one engine request per prompt, each with n choices, so choice
`prompt * n + index` (OpenAI's prompt-major order). Log probabilities come out in each endpoint's own shape:

    completions  choices[i].logprobs = {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}
    chat         choices[i].logprobs = {content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}

With `echo` the prompt's text comes first in a choice's text and, with logprobs, its tokens come first in the lists
(the first has no log probability: null). Pure (no Ray, no HTTP, no torch): token ids become strings through a
`TokenText` built on the tokenizer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from lerpray.feedback import Steerer
from lerpray.model.requests import GenerationRequest, TokenEvent
from lerpray.serve.responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionResponse,
    TokenLogprob,
    TopLogprob,
    Usage,
)

__all__ = ["MIX_HEADER", "Reply", "TokenText", "mix_headers"]

MIX_HEADER = "x-lerpray-mix"  # the resolved mix: the only place a stream can say it before its first token
MIN_LOGPROB = -9999.0  # JSON has no -inf; OpenAI reports impossible tokens as -9999
Entry = tuple[int, float | None, Sequence[tuple[int, float]] | None]  # (token id, logprob, [(alt id, logprob)])


def mix_headers(resolved: dict) -> dict[str, str]:
    """The resolved mix (ResolvedMix.report) as a response header (compact JSON, ASCII)."""
    return {MIX_HEADER: json.dumps(resolved, separators=(",", ":"), ensure_ascii=True)}


class TokenText:
    """Token id -> the text OpenAI's logprobs show for it, and whether it counts towards text offsets.

    A token is decoded after a fixed one-character context and the context's text is cut off, so a leading space
    survives (SentencePiece drops it when a token is decoded alone). Special tokens show their name and take no
    room in the text; a token holding part of a multi-byte character shows its vocabulary name and no bytes.
    Without a tokenizer (tests), a token's text is its id.
    """

    def __init__(self, tokenizer=None) -> None:
        self._tokenizer = tokenizer
        if tokenizer is not None:
            self._special = frozenset(tokenizer.all_special_ids)
            self._context = tokenizer.encode("a", add_special_tokens=False)[-1:]
            self._context_text = self._decode(self._context)
        self.text = lru_cache(maxsize=65536)(self._text)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _text(self, token_id: int) -> tuple[str, list[int] | None, int]:
        """(shown text, its UTF-8 bytes or None, characters it takes in the reply's text)."""
        if self._tokenizer is None:
            return str(token_id), list(str(token_id).encode()), len(str(token_id))
        if token_id in self._special:
            return self._tokenizer.convert_ids_to_tokens(token_id), None, 0
        full = self._decode([*self._context, token_id])
        text = full[len(self._context_text):] if full.startswith(self._context_text) else self._decode([token_id])
        if not text or "\ufffd" in text:  # part of a character: its bytes are not text on their own
            return self._tokenizer.convert_ids_to_tokens(token_id), None, len(text)
        return text, list(text.encode()), len(text)


@dataclass
class _Choice:
    prompt: str  # echoed before the completion ("" without echo)
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    started: bool = False
    offset: int = 0  # characters of the choice's text so far (text_offset of its next token)
    entries: list[Entry] = field(default_factory=list)
    steering_points: int = 0  # closed-loop measurements already sent in the stream


class Reply:
    """Accumulates one HTTP request's token events into an OpenAI response, or turns each into a stream chunk."""

    def __init__(
        self,
        route: str,
        requests: Sequence[GenerationRequest],
        model: str,
        anchors: Sequence[str],
        fingerprint: str | None = None,
        *,
        echo: bool = False,
        tokens: TokenText | None = None,
    ) -> None:
        self.route = route
        self.chat = route == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + requests[0].request_id
        self.model = model
        self.fingerprint = fingerprint
        self.created = int(time.time())
        self.mix = dict(zip(anchors, requests[0].mix.own(requests[0].coeffs), strict=True))  # the set's own
        self.logprobs = requests[0].sampling.logprobs is not None
        self.tokens = tokens or TokenText()
        self._position = {(r.request_id, i): p * r.n + i for p, r in enumerate(requests) for i in range(r.n)}
        self._choices = [_Choice(r.prompt if echo and r.prompt is not None else "") for r in requests for _ in range(r.n)]
        self._prompt_tokens: dict[str, int] = {}
        self._prompt_entries: dict[str, list[Entry]] = {}  # choice 0's, for its sibling choices
        # closed-loop requests (lerpray.feedback): each choice reports its own mixes and final score
        self._steered = {r.request_id: r for r in requests if isinstance(r.steer, Steerer)}

    def add(self, event: TokenEvent) -> dict | None:
        """Record an event; returns its stream chunk, or None when it released no text, token or finish."""
        choice = self._choices[self._position[event.request_id, event.index]]
        text, entries = event.text, []
        if not choice.started:
            choice.started = True
            text = choice.prompt + text
            if event.prompt_logprobs is not None:
                self._prompt_entries[event.request_id] = event.prompt_logprobs
            if choice.prompt and self.logprobs:
                entries += self._prompt_entries.get(event.request_id, [])
        if event.token_id >= 0 and event.logprob is not None:
            entries.append((event.token_id, event.logprob, event.top_logprobs))
        choice.parts.append(text)
        choice.entries += entries
        choice.finish_reason = event.finish_reason
        choice.completion_tokens = event.completion_tokens
        self._prompt_tokens[event.request_id] = event.prompt_tokens
        if not text and not entries and event.finish_reason is None:
            return None
        index = self._position[event.request_id, event.index]
        chunk = self._chunk(index, text, event.finish_reason, self._logprobs(choice, entries))
        if event.request_id in self._steered:
            self._steering(chunk["choices"][0], choice, event)
        return chunk

    def _steering(self, out: dict, choice: _Choice, event: TokenEvent) -> None:
        """A closed-loop choice's chunk carries the loop's newest measurement (`steering`: token, alpha, score),
        once, so a client can show the score as the reply is written; its last chunk the whole `resolved_mix`."""
        trajectory = self._steered[event.request_id].steer.trajectories.get(event.index, [])
        if len(trajectory) > choice.steering_points:
            out["steering"], choice.steering_points = trajectory[-1], len(trajectory)
        if event.finish_reason is not None:
            out["resolved_mix"] = self._closed_loop(event.request_id, event.index)

    @property
    def usage(self) -> Usage:
        return Usage.of(sum(self._prompt_tokens.values()), sum(c.completion_tokens for c in self._choices))

    def opening_chunks(self) -> list[dict]:
        """Chat streams open with the assistant's role, once per choice, as OpenAI's do."""
        if not self.chat:
            return []
        choices = [ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")) for i in
                   range(len(self._choices))]  # fmt: skip
        return [ChatCompletionChunk(choices=choices, **self._common()).model_dump()]

    def usage_chunk(self) -> dict:
        """The last chunk when stream_options.include_usage is set: no choices, the token counts."""
        kind = ChatCompletionChunk if self.chat else CompletionChunk
        return kind(choices=[], usage=self.usage, **self._common()).model_dump()

    def response(self) -> dict:
        common = {**self._common(), "usage": self.usage, "interpolation": self.mix}
        choices = []
        for index, choice in enumerate(self._choices):
            choice.offset = 0  # text offsets count from the start of the whole text again
            text, logprobs = "".join(choice.parts), self._logprobs(choice, choice.entries)
            if self.chat:
                choices.append(ChatChoice(index=index, message=AssistantMessage(content=text), logprobs=logprobs,
                                          finish_reason=choice.finish_reason))  # fmt: skip
            else:
                choices.append(CompletionChoice(index=index, text=text, logprobs=logprobs,
                                                finish_reason=choice.finish_reason))  # fmt: skip
        kind = ChatCompletionResponse if self.chat else CompletionResponse
        out = kind(choices=choices, **common).model_dump()
        for (request_id, i), index in self._position.items():
            if request_id in self._steered:
                out["choices"][index]["resolved_mix"] = self._closed_loop(request_id, i)
        return out

    def _closed_loop(self, request_id: str, choice: int) -> dict:
        """A steered choice's `resolved_mix`: where it started, its loop, the mixes it used and its final score."""
        request = self._steered[request_id]
        return {**request.mix.report, "feedback": request.steer.report(choice)}

    def _logprobs(self, choice: _Choice, entries: list[Entry]) -> ChatLogprobs | CompletionLogprobs | None:
        """The endpoint's logprobs object for `entries` (advancing the choice's text offset), or None."""
        if not self.logprobs:
            return None
        if self.chat:
            return ChatLogprobs(content=[self._chat_entry(token, lp, top) for token, lp, top in entries])
        out = CompletionLogprobs()
        for token, lp, top in entries:
            text, _, width = self.tokens.text(token)
            out.tokens.append(text)
            out.token_logprobs.append(None if lp is None else max(lp, MIN_LOGPROB))
            out.top_logprobs.append(None if lp is None else
                                    {self.tokens.text(t)[0]: max(v, MIN_LOGPROB) for t, v in top or ()})  # fmt: skip
            out.text_offset.append(choice.offset)
            choice.offset += width
        return out

    def _chat_entry(self, token: int, lp: float, top) -> TokenLogprob:
        text, raw, _ = self.tokens.text(token)
        alternatives = [TopLogprob(token=self.tokens.text(t)[0], logprob=max(v, MIN_LOGPROB),
                                   bytes=self.tokens.text(t)[1]) for t, v in top or ()]  # fmt: skip
        return TokenLogprob(token=text, logprob=max(lp, MIN_LOGPROB), bytes=raw, top_logprobs=alternatives)

    def _chunk(self, index: int, text: str, finish_reason: str | None, logprobs) -> dict:
        if self.chat:
            delta = ChatDelta(content=text or None)
            choices = [ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)]
            return ChatCompletionChunk(choices=choices, **self._common()).model_dump()
        choices = [CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish_reason)]
        return CompletionChunk(choices=choices, **self._common()).model_dump()

    def _common(self) -> dict:
        return {"id": self.id, "created": self.created, "model": self.model, "system_fingerprint": self.fingerprint}

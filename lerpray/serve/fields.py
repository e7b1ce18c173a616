"""What each OpenAI request field does on this server: the one list per endpoint (README's coverage table is
`coverage_table()` of these).

Every field of OpenAI's request types (openai/types/completion_create_params.py and
openai/types/chat/completion_create_params.py) is listed under one of five kinds:

    SUPPORTED   honoured as OpenAI documents it
    EXTENSION   lerpray's own (`interpolation`, `top_k`, `min_tokens`)
    IGNORED     accepted and ignored: it does not change what this server generates (metadata, store, ...)
    NOT_YET     needs work in the generation engine: only its neutral values are accepted for now (no field is
                listed so since n, logprobs, echo and penalties arrived). When the engine implements one, flip its
                kind to SUPPORTED (the neutral values then stop mattering) and pass it on in protocol.py
    REFUSED     a 400 naming the field and saying it is not supported (tools, JSON mode, audio, ...), except
                for its neutral values (tools=[], tool_choice="none", response_format={"type": "text"}, ...)

Unknown fields (typos) stay a 400 "unknown field" (schemas.py forbids extras). The request models in schemas.py
declare each field's JSON type; a unit test checks that their fields and these lists agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["CHAT", "COMPLETIONS", "FieldRule", "Kind", "MESSAGE", "coverage_table", "refusal"]


class Kind(str, Enum):
    SUPPORTED = "supported"
    EXTENSION = "lerpray extension"
    IGNORED = "accepted, ignored"
    NOT_YET = "neutral value only (for now)"
    REFUSED = "400: not supported"


@dataclass(frozen=True)
class FieldRule:
    kind: Kind
    note: str  # what it does here: the README table's text and the reason in a refusal
    neutral: tuple[object, ...] = ()  # NOT_YET / REFUSED: values accepted because they ask for nothing


S, X, IGN, NOT_YET, REF = Kind.SUPPORTED, Kind.EXTENSION, Kind.IGNORED, Kind.NOT_YET, Kind.REFUSED
_NO_TOOLS = "tool and function calling: this server generates plain text"

# Fields both endpoints share, with the same meaning.
_SHARED: dict[str, FieldRule] = {
    "model": FieldRule(S, "the served id, a preset's id, or `<id>:<mix>` with a mix inline; omitted: the served id"),
    "max_tokens": FieldRule(S, "capped by the server's `max_tokens_cap`; omitted: `default_max_tokens`"),
    "temperature": FieldRule(S, "0 = greedy"),
    "top_p": FieldRule(S, "nucleus sampling"),
    "stop": FieldRule(S, "up to 4 strings; the text is cut before the first one"),
    "seed": FieldRule(S, "same seed, mix and prompt: same text, whatever else is in the batch"),
    "stream": FieldRule(S, "server-sent events, as OpenAI's"),
    "stream_options": FieldRule(S, "`include_usage` honoured; `include_obfuscation` ignored"),
    "user": FieldRule(IGN, "end-user id; not used"),
    "n": FieldRule(S, "choices share the prompt's prefill; choice i samples with seed + i; at most the server's "
                      "`max_batch_size`"),
    "presence_penalty": FieldRule(S, "in [-2, 2], over the tokens generated so far"),
    "frequency_penalty": FieldRule(S, "in [-2, 2], over the tokens generated so far"),
    "logit_bias": FieldRule(S, "token id (a string) -> bias in [-100, 100]; ids must be below the vocabulary size"),
    "interpolation": FieldRule(X, "the mix (alpha/lambda, raw anchors, extrapolate); overrides the model id's mix"),
    "top_k": FieldRule(X, "keep the k most likely tokens (0 = off)"),
    "min_tokens": FieldRule(X, "vLLM's: EOS cannot be sampled and stop strings do not end a choice before this many "
                               "tokens; at most max_tokens"),
}

COMPLETIONS: dict[str, FieldRule] = {
    "prompt": FieldRule(S, "a string or a list of strings: n choices per prompt, prompt-major (token-id prompts: "
                           "400)"),
    **_SHARED,
    "best_of": FieldRule(S, "equal to `n` (or omitted); more candidates than choices get a 400"),
    "echo": FieldRule(S, "the prompt before the completion, with its token log probabilities (the first is null) "
                         "when `logprobs` is set; `max_tokens: 0` scores the prompt alone"),
    "logprobs": FieldRule(S, "N in [0, 20]: each token's log probability under the request's mix and the N most "
                             "likely alternatives"),
    "suffix": FieldRule(REF, "text after the completion (insertion): this server only continues a prompt", (None, "")),
}

CHAT: dict[str, FieldRule] = {
    "messages": FieldRule(S, "system/developer/user/assistant messages with text content, rendered with the "
                             "model's chat template"),
    **_SHARED,
    "max_completion_tokens": FieldRule(S, "OpenAI's newer name for `max_tokens` (give one of the two)"),
    "logprobs": FieldRule(S, "each token's log probability under the request's mix"),
    "top_logprobs": FieldRule(S, "0-20 most likely alternatives per token (needs `logprobs: true`)"),
    "metadata": FieldRule(IGN, "stored-completion tags; nothing is stored"),
    "store": FieldRule(IGN, "nothing is stored"),
    "service_tier": FieldRule(IGN, "one tier here"),
    "parallel_tool_calls": FieldRule(IGN, "no tools here"),
    "prompt_cache_key": FieldRule(IGN, "cache routing hint; not used"),
    "prompt_cache_retention": FieldRule(IGN, "cache routing hint; not used"),
    "prompt_cache_options": FieldRule(IGN, "cache routing hint; not used"),
    "safety_identifier": FieldRule(IGN, "end-user id; not used"),
    "reasoning_effort": FieldRule(IGN, "for reasoning models; not used"),
    "verbosity": FieldRule(IGN, "for reasoning models; not used"),
    "prediction": FieldRule(IGN, "predicted output, a latency hint; the output does not depend on it"),
    "modalities": FieldRule(REF, "output modalities: text only", (None, ["text"])),
    "response_format": FieldRule(REF, "JSON mode and structured outputs", (None, {"type": "text"})),
    "tools": FieldRule(REF, _NO_TOOLS, (None, [])),
    "tool_choice": FieldRule(REF, _NO_TOOLS, (None, "none")),
    "functions": FieldRule(REF, _NO_TOOLS, (None, [])),
    "function_call": FieldRule(REF, _NO_TOOLS, (None, "none")),
    "audio": FieldRule(REF, "audio output: text only", (None,)),
    "web_search_options": FieldRule(REF, "web search: the model answers from its weights only", (None,)),
    "moderation": FieldRule(REF, "moderation: this server has no moderation model", (None,)),
}

# Fields of one chat message (openai/types/chat/chat_completion_*_message_param.py).
MESSAGE: dict[str, FieldRule] = {
    "role": FieldRule(S, "system, developer (= system), user, assistant; tool and function messages get a 400"),
    "content": FieldRule(S, "a string or text parts; other parts (images, audio, files, refusals) get a 400"),
    "name": FieldRule(IGN, "participant name; not shown to the model"),
    "refusal": FieldRule(IGN, "an earlier refusal; not shown to the model"),
    "tool_calls": FieldRule(REF, _NO_TOOLS, (None, [])),
    "function_call": FieldRule(REF, _NO_TOOLS, (None,)),
    "tool_call_id": FieldRule(REF, _NO_TOOLS, (None,)),
    "audio": FieldRule(REF, "audio: text only", (None,)),
}


def refusal(rule: FieldRule) -> str:
    """The 400's message for a value outside a NOT_YET or REFUSED field's neutral values."""
    neutral = [v for v in rule.neutral if v is not None]
    fix = f"remove it or set it to {_json(neutral[0])}" if neutral else "remove it"
    if rule.kind is Kind.NOT_YET:
        return f"is not supported by this server yet ({rule.note}); {fix}"
    return f"is not supported by this server ({rule.note}); {fix}"


def coverage_table() -> str:
    """README's table: one row per field, what it does on each endpoint."""
    names = list(dict.fromkeys(["prompt", *CHAT, *COMPLETIONS]))
    kinds = list(Kind)
    rows = ["| field | /v1/completions | /v1/chat/completions | here |", "|---|---|---|---|"]
    for name in sorted(names, key=lambda n: kinds.index((CHAT.get(n) or COMPLETIONS[n]).kind)):
        left, right = COMPLETIONS.get(name), CHAT.get(name)
        notes = [r.note for r in (left, right) if r is not None]
        note = notes[0] if len(set(notes)) == 1 else f"completions: {notes[0]}; chat: {notes[1]}"
        rows.append(f"| `{name}` | {_cell(left)} | {_cell(right)} | {note} |")
    return "\n".join(rows)


def _cell(rule: FieldRule | None) -> str:
    if rule is None:
        return "—"
    neutral = [_json(v) for v in rule.neutral if v is not None]
    if rule.kind is Kind.NOT_YET:
        return f"only `{neutral[0]}` for now"
    if rule.kind is Kind.REFUSED:
        return f"400 (`{neutral[0]}` accepted)" if neutral else "400"
    return {Kind.SUPPORTED: "yes", Kind.EXTENSION: "yes (extension)", Kind.IGNORED: "accepted, ignored"}[rule.kind]


def _json(value: object) -> str:
    import json

    return json.dumps(value)

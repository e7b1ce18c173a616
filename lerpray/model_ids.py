"""Model ids that carry a mix inline, for clients that can only set a model name (chat UIs, agents, LiteLLM).

Pure: text <-> the request's `interpolation` form (the dict `lerpray.mixing.resolve_mix` takes). Syntax, after the
served id and a colon, sections separated by ";" (the first one's "alpha:" may be left out):

    lerpray:sentiment=0.8,formality=0.3                   {"alpha": {"sentiment": 0.8, "formality": 0.3}}
    lerpray:sentiment=0.8,formality=0.3;lambda:sentiment=0.6,formality=0.4
    lerpray:anchors:sentiment.positive=0.7,sentiment.negative=0.3
    lerpray:sentiment=1.5;extrapolate                     {"alpha": {"sentiment": 1.5}, "extrapolate": true}

Names and numbers are checked by `lerpray.steering.resolve` like any `interpolation`; every error is a MixError on
the field "model" whose message quotes the JSON path, e.g. "model: interpolation.alpha.nope: unknown attribute; ...".
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from lerpray.mixing import MixError

__all__ = ["SECTIONS", "format_inline_mix", "inline_spec", "parse_inline_mix"]

FIELD = "model"
SECTIONS = ("alpha", "lambda", "anchors")
EXTRAPOLATE = "extrapolate"
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_SYNTAX = "write <model>:<attribute>=<alpha>,... (see README: inline mixes)"


def inline_spec(model: str, served: str) -> str | None:
    """The mix text of `served:<mix>`, or None when `model` is not of that form."""
    prefix = served + ":"
    return model[len(prefix):] if model.startswith(prefix) else None


def parse_inline_mix(spec: str) -> dict[str, object]:
    """'sentiment=0.8;lambda:sentiment=1' -> {"alpha": {"sentiment": 0.8}, "lambda": {"sentiment": 1.0}}.

    Raises MixError("model", ...) for text that is not in the syntax above; the names are not checked here.
    """
    mix: dict[str, object] = {}
    for i, section in enumerate(spec.split(";")):
        section = section.strip()
        if section == EXTRAPOLATE:
            _once(mix, EXTRAPOLATE)
            mix[EXTRAPOLATE] = True
            continue
        kind, sep, pairs = section.partition(":")
        if not sep:
            if i > 0:
                raise MixError(FIELD, f"section {_quote(section)} needs a kind: one of {', '.join(SECTIONS)}, or "
                               f"'{EXTRAPOLATE}'; {_SYNTAX}")
            kind, pairs = "alpha", section
        if kind not in SECTIONS:
            raise MixError(FIELD, f"unknown section {_quote(kind)}; use {', '.join(SECTIONS)} or '{EXTRAPOLATE}'")
        _once(mix, kind)
        mix[kind] = _pairs(pairs, kind)
    return mix


def format_inline_mix(mix: Mapping[str, object]) -> str:
    """The inverse of `parse_inline_mix` (without the served id), for docs, the playground and tests."""
    sections = []
    for kind in SECTIONS:
        values = mix.get(kind)
        if isinstance(values, Mapping):
            pairs = ",".join(f"{name}={float(value)!r}" for name, value in values.items())
            sections.append(pairs if kind == "alpha" else f"{kind}:{pairs}")
    if mix.get(EXTRAPOLATE) is True:
        sections.append(EXTRAPOLATE)
    return ";".join(sections)


def _pairs(text: str, kind: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in text.split(","):
        name, sep, number = (part.strip() for part in pair.partition("="))
        if not sep or not name:
            raise MixError(FIELD, f"{kind}: expected name=number, got {_quote(pair)}; {_SYNTAX}")
        if not _NUMBER.match(number):
            raise MixError(FIELD, f"{kind}.{_short(name)}: {_quote(number)} is not a number")
        if name in out:
            raise MixError(FIELD, f"{kind}.{_short(name)} is given twice; give it once")
        out[name] = float(number)
    return out


def _once(mix: dict, kind: str) -> None:
    if kind in mix:
        raise MixError(FIELD, f"section {kind!r} is given twice; give it once")


def _short(text: str) -> str:
    return text if len(text) <= 64 else text[:61] + "..."


def _quote(text: str) -> str:
    return repr(_short(text))

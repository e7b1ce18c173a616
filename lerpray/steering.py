"""The one way in for a mix: what a caller has -> a `ResolvedMix` (pure; no Ray, no torch, no I/O).

`resolve(context, model=..., interpolation=..., max_tokens=...)` takes a request's model id and `interpolation`
object (or a batch row's mix) and the set's `MixContext` (layout, policy, calibration, presets resolved when the set
loaded). The body's `interpolation` wins over the model id's mix: a preset's, an inline mix's (lerpray/model_ids.py),
or the centre of the anchors' hull for the served id. On top of lerpray.mixing's forms (alpha/lambda, raw anchors,
extrapolate) an `interpolation` may hold:

* targets: ``{"target": {"sentiment": 0.7}, "lambda": {...}?, "extrapolate": true?}``: scores on the set's
  calibrated scale, turned into alphas by lerpray.targets (jointly when several), then resolved as an alpha mix;
* schedules: ``{"schedule": [{"until": 16, "mix": {...}}, {"mix": {...}}]}``: token i (0-based, generated tokens)
  uses the first piece with i < until; the last piece has no until and runs to the end of the reply;
* ramps: ``{"ramp": {"from": {...}, "to": {...}, "over": 32}}``: token i uses from + (to - from) * min(i / over, 1),
  linear in the coefficients (so linear in alpha when both ends share their lambdas).

Each piece and ramp end is any plain mix form, targets included; schedules do not nest. Every error is a MixError
naming its field. The engine runs a ResolvedMix as is (`at(i)`); replies and batch plans write its one JSON form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from lerpray.feedback import Feedback, closed_loop
from lerpray.mixing import (
    FIELD,
    AnchorLayout,
    ExtrapolationBounds,
    MixError,
    default_mix,
    finite_float,
    json_type,
    report_mix,
    resolve_mix,
)
from lerpray.model_ids import inline_spec, parse_inline_mix
from lerpray.targets import Calibration, target_mix

__all__ = ["MixContext", "ResolvedMix", "UnknownModelError", "resolve", "resolve_presets"]

Coeffs = tuple[float, ...]  # [K]
_DEFAULT_BOUNDS = ExtrapolationBounds()


class UnknownModelError(MixError):
    """A model id the set does not serve (the server answers 404 listing what it serves)."""

    def __init__(self, model: str, served: str | None, presets: list[str]) -> None:
        shown, ids = model if len(model) <= 64 else model[:61] + "...", ", ".join(map(repr, [served, *presets]))
        super().__init__("model", f"model {shown!r} does not exist here; this server serves {ids}, or {served}:<mix> "
                         f"with a mix inline (e.g. {served}:ATTRIBUTE=0.8; GET /v1/models)")  # fmt: skip


@dataclass(frozen=True)
class ResolvedMix:
    """A mix resolved against one anchor set: the coefficients [K] of every generated token, and its report.

    Token i uses, with a ramp (start, end, over): start + (end - start) * min(i / over, 1); else the first piece
    with i < until (the last piece's until is None; one piece: a constant mix). `report` is the one JSON form:
    what the mix resolved to (alphas with normalised lambdas, or raw weights; targets with their predicted scores),
    each plain mix in it with its "coefficients"; replies send it as `resolved_mix`, batch plans store it.
    """

    pieces: tuple[tuple[int | None, Coeffs], ...] = ()  # ((until, coeffs), ..., (None, coeffs)); () with a ramp
    ramp: tuple[Coeffs, Coeffs, int] | None = None  # (start, end, over)
    report: dict = field(default_factory=dict, compare=False, hash=False)
    feedback: Feedback | None = field(default=None, compare=False, hash=False)  # closed loop (lerpray.feedback)
    block: Sequence[int] | None = None  # the engine row's index of each own coefficient (`embed`); None: the row

    def __post_init__(self) -> None:
        if bool(self.pieces) == (self.ramp is not None) or (self.pieces and self.pieces[-1][0] is not None):
            raise ValueError("a ResolvedMix has either pieces ending with an open one (until None) or a ramp")

    @classmethod
    def constant(cls, coeffs: Coeffs, report: dict | None = None) -> ResolvedMix:
        coeffs = tuple(float(c) for c in coeffs)
        return cls(((None, coeffs),), report={**(report or {}), "coefficients": list(coeffs)})

    @classmethod
    def from_json(cls, doc: Mapping) -> ResolvedMix:
        """The inverse of `report`: a plan row's or a reply's `resolved_mix` -> the mix the engine runs."""
        if "schedule" in doc:
            return cls(tuple((p.get("until"), _coeffs(p["mix"])) for p in doc["schedule"]), report=dict(doc))
        if "ramp" in doc:
            ramp = doc["ramp"]
            return cls(ramp=(_coeffs(ramp["from"]), _coeffs(ramp["to"]), int(ramp["over"])), report=dict(doc))
        feedback = Feedback.from_report(doc["feedback"]) if "feedback" in doc else None
        return cls(((None, _coeffs(doc)),), report=dict(doc), feedback=feedback)

    @property
    def coeffs(self) -> Coeffs:
        """Token 0's coefficients [K]."""
        return self.at(0)

    @property
    def scheduled(self) -> bool:
        """Whether a row's coefficients may change between tokens: a schedule, a ramp, or feedback (Row.mix)."""
        return len(self.pieces) > 1 or self.ramp is not None or self.feedback is not None

    def at(self, index: int) -> Coeffs:
        """The coefficients [K] of generated token `index` (0-based)."""
        if self.ramp is not None:
            start, end, over = self.ramp
            t = min(index / over, 1.0) if over > 0 else 1.0
            return tuple(a + (b - a) * t for a, b in zip(start, end, strict=True))
        return next(coeffs for until, coeffs in self.pieces if until is None or index < until)

    def embed(self, at: int | Sequence[int], width: int) -> ResolvedMix:
        """This mix on a `width`-wide engine row: own anchor k at at[k] (paged) or at + k (a block), zeros elsewhere."""
        own, slots = len(self.coeffs), range(at, at + len(self.coeffs)) if isinstance(at, int) else tuple(at)
        if self.block is not None or len(set(slots)) != own or not all(0 <= s < width for s in slots):
            where = f"offset {at}" if isinstance(at, int) else f"slots {list(slots)}"
            raise ValueError("this mix is already embedded in a wider row" if self.block is not None else
                             f"a mix of {own} coefficients does not fit at {where} of a {width}-wide row")
        pad = lambda c: tuple(dict(zip(slots, c, strict=True)).get(i, 0.0) for i in range(width))  # noqa: E731
        ramp = None if self.ramp is None else (pad(self.ramp[0]), pad(self.ramp[1]), self.ramp[2])
        return replace(self, pieces=tuple((u, pad(c)) for u, c in self.pieces), ramp=ramp, block=slots)

    def own(self, coeffs: Coeffs) -> Coeffs:
        """The set's own coefficients [K_set] of an engine row of this mix (as is when not embedded)."""
        return tuple(coeffs) if self.block is None else tuple(coeffs[i] for i in self.block)

    def widen(self, coeffs: Coeffs) -> Coeffs:
        """The engine row of the set's own coefficients (a steer hook's; as is when not embedded)."""
        row = dict(zip(self.block, coeffs, strict=True)) if self.block is not None else {}  # engine index -> own c
        return tuple(coeffs) if self.block is None else tuple(row.get(i, 0.0) for i in range(len(self.coeffs)))

    def mixes(self) -> list[Coeffs]:
        """Every coefficient row the mix names (for validation)."""
        return [*(c for _, c in self.pieces), *((self.ramp[0], self.ramp[1]) if self.ramp else ())]


@dataclass(frozen=True)
class MixContext:
    """What a loaded set resolves mixes against; built once when the set loads (calibration read there)."""

    layout: AnchorLayout
    bounds: ExtrapolationBounds | None = _DEFAULT_BOUNDS  # None: the server does not allow extrapolation
    calibration: Calibration | None = None
    calibration_problem: str | None = None  # why the set's calibration file cannot be used (targets get a 400)
    served: str | None = None  # the set's own model id: the hull's centre; "<served>:<mix>" is an inline mix
    presets: Mapping[str, ResolvedMix] = field(default_factory=dict)  # model id -> its mix (resolve_presets)
    engine_block: tuple[int, int] | str | None = None  # (offset, width) in a shared engine (embed); str: a paged set


def resolve(context: MixContext, *, model: str | None = None, interpolation: object = None,
            max_tokens: int | None = None) -> ResolvedMix:  # fmt: skip
    """The mix a request runs: its `interpolation` if given (None: absent), else its model id's. The model id is
    checked either way; `max_tokens` bounds schedule indices. Raises MixError naming the field to change."""
    spec = None if model is None or model == context.served else inline_spec(model, context.served or "")
    if model is not None and model != context.served and model not in context.presets and spec is None:
        raise UnknownModelError(model, context.served, list(context.presets))
    inline = None if spec is None else _inline(parse_inline_mix(spec), context)
    if interpolation is not None:
        if isinstance(interpolation, Mapping) and "feedback" in interpolation:
            return _closed_loop(interpolation, context, max_tokens)
        if isinstance(interpolation, Mapping) and ("schedule" in interpolation or "ramp" in interpolation):
            return _scheduled(interpolation, context, max_tokens)
        return ResolvedMix.constant(*_plain(interpolation, FIELD, context))
    if inline is not None:
        return inline
    if model is not None and model in context.presets:
        return context.presets[model]
    return ResolvedMix.constant(*_plain(default_mix(context.layout), FIELD, context))


def resolve_presets(presets: Mapping[str, object], context: MixContext) -> dict[str, ResolvedMix]:
    """Each preset's mix (any `interpolation` form); a ValueError naming the preset's field if one does not fit."""
    out = {}
    for name, mix in presets.items():
        try:
            out[name] = resolve(context, interpolation=mix)
        except MixError as err:
            raise ValueError(f"serve config {err.field.replace(FIELD, f'presets.{name}', 1)}: {err.message}") from None
    return out


def _closed_loop(mix: Mapping, context: MixContext, max_tokens: int | None) -> ResolvedMix:
    """{"target": ..., "feedback": {...}}: the open-loop target mix to start from, with its Feedback beside it."""
    if "schedule" in mix or "ramp" in mix:
        raise MixError(f"{FIELD}.feedback", "cannot go with a schedule or a ramp; give a target with feedback")
    open_loop = {k: v for k, v in mix.items() if k != "feedback"}
    if "target" not in open_loop:
        raise MixError(f"{FIELD}.feedback", 'needs a target in the same mix: {"target": {"ATTRIBUTE": SCORE}, '
                       '"feedback": {"every": 8}}')  # fmt: skip
    coeffs, report = _plain(open_loop, FIELD, context)
    feedback = closed_loop(mix["feedback"], open_loop, report, context.calibration, context.bounds, max_tokens)
    return replace(ResolvedMix.constant(coeffs, {**report, "feedback": feedback.report()}), feedback=feedback)


def _inline(mix: dict, context: MixContext) -> ResolvedMix:
    try:
        return ResolvedMix.constant(*_plain(mix, FIELD, context))
    except MixError as err:
        raise MixError("model", f"{err.field}: {err.message}") from None


def _plain(mix: object, at: str, context: MixContext) -> tuple[Coeffs, dict]:
    """One mix, targets included -> (coefficients [K], its report); errors name fields under `at`."""
    try:
        extra = {}
        if isinstance(mix, Mapping) and "target" in mix:
            mix, extra = target_mix(mix, context.layout, context.bounds, context.calibration,
                                    context.calibration_problem)  # fmt: skip
        coeffs = resolve_mix(mix, context.layout, context.bounds)
    except MixError as err:
        raise MixError(err.field.replace(FIELD, at, 1), err.message) from None
    return coeffs, {**report_mix(mix), **extra}


def _scheduled(mix: Mapping, context: MixContext, max_tokens: int | None) -> ResolvedMix:
    kind = "schedule" if "schedule" in mix else "ramp"
    for key in mix:
        if key != kind:
            why = "give a schedule or a ramp, not both" if key in ("schedule", "ramp") else (
                "put it in each piece's mix instead")  # fmt: skip
            raise MixError(f"{FIELD}.{key}", f"cannot go with {kind}; {why}")
    if kind == "ramp":
        return _ramp(mix["ramp"], context, max_tokens)
    pieces, at = mix["schedule"], f"{FIELD}.schedule"
    if not isinstance(pieces, list) or not pieces:
        got = "an empty array" if isinstance(pieces, list) else json_type(pieces)
        raise MixError(at, 'must be a non-empty array of pieces such as [{"until": 16, "mix": {...}}, '
                       f'{{"mix": {{...}}}}] (got {got})')  # fmt: skip
    resolved: list[dict] = []
    previous = 0
    for i, piece in enumerate(pieces):
        where, last = f"{at}[{i}]", i == len(pieces) - 1
        _check_keys(piece, where, ("until", "mix"))
        until = None
        if last and "until" in piece:
            raise MixError(f"{where}.until", "the last piece must have no until (it runs to the end of the reply); "
                           'add a final piece {"mix": {...}} without until')  # fmt: skip
        if not last:
            if "until" not in piece:
                raise MixError(f"{where}.until", "is required on every piece but the last (only the last runs open)")
            until = _index(piece["until"], f"{where}.until", max_tokens)
            if until < previous:
                raise MixError(f"{where}.until", f"pieces must be in order of until: {until} comes after {previous}")
            if until == previous:
                what = ("is empty (until 0: no token uses it)" if until == 0
                        else f"overlaps the previous piece (both end at {until})")  # fmt: skip
                raise MixError(f"{where}.until", f"{what}; every until must be larger than the one before it")
            previous = until
        report = _piece_mix(piece, f"{where}.mix", context)
        resolved.append({**({} if until is None else {"until": until}), "mix": report})
    return ResolvedMix.from_json({"schedule": resolved})


def _ramp(ramp: object, context: MixContext, max_tokens: int | None) -> ResolvedMix:
    at = f"{FIELD}.ramp"
    _check_keys(ramp, at, ("from", "to", "over"), required=("from", "to", "over"))
    over = _index(ramp["over"], f"{at}.over", max_tokens)
    if over == 0:
        raise MixError(f"{at}.over", "must be >= 1 (the number of tokens the ramp takes)")
    start = _piece_mix(ramp, f"{at}.from", context, key="from")
    end = _piece_mix(ramp, f"{at}.to", context, key="to")
    return ResolvedMix.from_json({"ramp": {"from": start, "to": end, "over": over}})


def _piece_mix(piece: Mapping, at: str, context: MixContext, key: str = "mix") -> dict:
    """A schedule piece's or ramp end's plain mix -> its report, with its "coefficients"."""
    if key not in piece:
        raise MixError(at, "is required: the mix this piece uses (alpha/lambda, anchors or target)")
    mix = piece[key]
    if isinstance(mix, Mapping):
        for nested in ("schedule", "ramp"):
            if nested in mix:
                raise MixError(f"{at}.{nested}", "schedules do not nest; give a plain mix (alpha/lambda, anchors or "
                               "target) here")  # fmt: skip
    coeffs, report = _plain(mix, at, context)
    return {**report, "coefficients": list(coeffs)}


def _coeffs(doc: Mapping) -> Coeffs:
    return tuple(float(c) for c in doc["coefficients"])


def _check_keys(value: object, at: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    if not isinstance(value, Mapping):
        raise MixError(at, f"must be an object with keys {', '.join(allowed)} (got {json_type(value)})")
    for key in value:
        if key not in allowed:
            raise MixError(f"{at}.{key}", f"unknown key; allowed keys: {', '.join(allowed)}")
    for key in required:
        if key not in value:
            raise MixError(f"{at}.{key}", "is required")


def _index(value: object, at: str, max_tokens: int | None) -> int:
    """A generated-token count: a whole number >= 0, at most max_tokens."""
    number = finite_float(value)
    if number is None or number != int(number) or number < 0:
        raise MixError(at, f"must be a whole number of generated tokens >= 0 (got "
                       f"{json_type(value) if number is None else value})")  # fmt: skip
    if max_tokens is not None and number > max_tokens:
        raise MixError(at, f"{int(number)} is beyond max_tokens {max_tokens}, so it would never be reached; "
                       f"lower it to at most {max_tokens} or raise max_tokens")  # fmt: skip
    return int(number)

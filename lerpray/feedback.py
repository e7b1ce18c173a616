"""Closed-loop steering: move a reply's alphas toward its targets while it is written (pure; no Ray, no torch).

A target resolved open loop (lerpray.targets) picks the alpha whose *calibrated mean* score is the target; one reply
can still land anywhere, and prompts unlike the calibration's shift the whole curve (a steady offset). Feedback
closes the loop per reply: every `every` generated tokens the text so far is scored with the calibration's own
scorer, and each targeted attribute's alpha is set by a PI controller in alpha units (the calibration's secant slope
turns a score error into an alpha step, so one gain suits every scorer's scale)::

    e_k   = (target - score_k) / slope                   slope = (f(hi) - f(lo)) / (hi - lo), score per alpha
    I_k   = clip(I_{k-1} + ki * e_k, lo - a0, hi - a0)   only while the output is not pushed past a bound
    a_k   = clip(a0 + kp * e_k + I_k, lo, hi)            a0: the open-loop alpha, [lo, hi]: the hull or the
                                                         server's extrapolation bounds on the calibrated grid

Anti-windup is conditional integration (no integral growth while saturated in the error's direction) plus a clamp
of the integral itself, so an unreachable target never stores up a push that overshoots once it becomes reachable.
On a linear plant score = slope * a + d the fixed point is e = 0 (the integral absorbs d), the open-loop offset the
calibration cannot remove. Several attributes run independent loops (cross effects are left to the integral).
The engine switches a row's coefficients between steps (Row.mix): no extra forward pass, other rows untouched.

A calibration with a partial-reply model (its curves' "partial": lerpray.reply_model) runs the predictive
controller instead: it compares the text so far with what the calibration's own replies scored after as many
tokens, predicts the reply's final offset and sets the alpha of the rest to cancel it (`gain`: the share of that
correction applied, 1 by default; `integral` unused; `every` 4 by default, as the first tokens settle most of a
short reply's score). Its alphas stay within the same distance of a0 on both sides (the nearer bound's), so that
saturating on one side only does not bias the mean away from the target."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lerpray.mixing import AnchorLayout, ExtrapolationBounds, MixError, finite_float, json_type, resolve_mix
from lerpray.reply_model import PartialModel, alpha_rest
from lerpray.targets import Calibration

__all__ = [
    "Score",
    "FEEDBACK_FIELD",
    "MID_REPLY_SCORERS",
    "Feedback",
    "Gains",
    "Loop",
    "Steerer",
    "parse_gains",
    "closed_loop",
    "update",
    "predict",
]

FEEDBACK_FIELD = "interpolation.feedback"
# Scorers cheap enough to run on a reply's text every few tokens inside the engine's step (lexicons and formulas,
# microseconds to a millisecond on a short text); embedding classifiers run a transformer and are refused.
MID_REPLY_SCORERS = frozenset({"vader", "textblob", "fkgl", "coleman-liau", "word-rarity", "formality-markers"})
EVERY_MAX = 4096


@dataclass(frozen=True)
class Gains:
    proportional: float = 0.5  # kp: alpha per (score error / slope)
    integral: float = 0.3  # ki: integral gain per update


@dataclass(frozen=True)
class Loop:
    """One attribute's loop: its target, the open-loop alpha, the calibration's slope and the allowed alphas."""

    target: float
    start: float  # a0, the open-loop alpha
    slope: float  # score per alpha (non-zero: flat calibrations are refused before this)
    lo: float
    hi: float


@dataclass(frozen=True)
class LoopState:
    alpha: float
    integral: float = 0.0
    written: float = 0.0  # sum over generated tokens of the alpha each was written with (predictive controller)
    tokens: int = 0  # generated tokens that sum covers


def update(loop: Loop, state: LoopState, score: float, gains: Gains) -> LoopState:
    """The next alpha of one loop after scoring the text so far at `score` (see the module docstring)."""
    error = (loop.target - score) / loop.slope  # alpha units
    integral = state.integral + gains.integral * error
    raw = loop.start + gains.proportional * error + integral
    if (raw > loop.hi and error > 0) or (raw < loop.lo and error < 0):
        integral = state.integral  # saturated and the error pushes further out: do not integrate
    integral = min(max(integral, loop.lo - loop.start), loop.hi - loop.start)
    alpha = min(max(loop.start + gains.proportional * error + integral, loop.lo), loop.hi)
    return LoopState(alpha, integral)


def predict(loop: Loop, model: PartialModel, state: LoopState, score: float, generated: int, gain: float) -> LoopState:
    """The predictive controller's next alpha after `generated` tokens scored `score` (see the module docstring):
    the tokens since the last update were written at state.alpha."""
    written = state.written + state.alpha * (generated - state.tokens)
    reach = min(loop.start - loop.lo, loop.hi - loop.start)  # symmetric authority around a0
    alpha = alpha_rest(model, generated, score, written / max(generated, 1), start=loop.start, slope=loop.slope,
                       lo=loop.start - reach, hi=loop.start + reach, gain=gain)  # fmt: skip
    return LoopState(alpha, 0.0, written, generated)


@dataclass(frozen=True)
class Feedback:
    """A request's closed loop, resolved once (lerpray.steering.resolve) and carried beside its ResolvedMix."""

    every: int  # generated tokens between rescorings
    gains: Gains
    loops: Mapping[str, Loop]  # attribute -> its loop
    scorers: Mapping[str, str]  # attribute -> the calibration's scorer name (one of MID_REPLY_SCORERS)
    mix: Mapping = field(default_factory=dict)  # the request's lambda / extrapolate, which the loops' alphas go with
    partial: Mapping[str, PartialModel] = field(default_factory=dict)  # attribute -> its model: predictive control

    def report(self) -> dict:
        """The one JSON form (replies' and batch plans' `resolved_mix.feedback`); `from_report` reads it back."""
        gains = {"gain": self.gains.proportional, "integral": self.gains.integral}
        loops = {a: {"target": p.target, "start": p.start, "slope": p.slope, "lo": p.lo, "hi": p.hi}
                 for a, p in self.loops.items()}  # fmt: skip
        out = {"every": self.every, **gains, "scorer": dict(self.scorers), "loops": loops, "mix": dict(self.mix)}
        if self.partial:
            out |= {"controller": "predictive", "partial": {a: m.report() for a, m in self.partial.items()}}
        return out

    @classmethod
    def from_report(cls, doc: Mapping) -> Feedback:
        loops = {a: Loop(**{k: float(v) for k, v in p.items()}) for a, p in doc["loops"].items()}
        gains = Gains(float(doc["gain"]), float(doc["integral"]))
        partial = {a: PartialModel.from_report(m) for a, m in doc.get("partial", {}).items()}
        return cls(int(doc["every"]), gains, loops, dict(doc["scorer"]), dict(doc.get("mix", {})), partial)


def parse_gains(spec: object, max_tokens: int | None, gain: float = Gains.proportional, every: int = 8
                ) -> tuple[int, Gains]:  # fmt: skip
    """A request's `feedback` object -> (every, gains); MixError naming the field. `gain`, `every`: defaults."""
    if not isinstance(spec, Mapping):
        raise MixError(FEEDBACK_FIELD, f'must be an object such as {{"every": 8}} (got {json_type(spec)})')
    for key in spec:
        if key not in ("every", "gain", "integral"):
            raise MixError(f"{FEEDBACK_FIELD}.{key}", "unknown key; allowed keys: every, gain, integral")
    every = spec.get("every", every)
    number = finite_float(every)
    if number is None or isinstance(every, bool) or number != int(number) or not 1 <= number <= EVERY_MAX:
        raise MixError(f"{FEEDBACK_FIELD}.every", f"must be a whole number of generated tokens between 1 and "
                       f"{EVERY_MAX} (got {every!r})")  # fmt: skip
    if max_tokens is not None and number >= max_tokens:
        raise MixError(f"{FEEDBACK_FIELD}.every", f"{int(number)} leaves no rescoring within max_tokens {max_tokens}; "
                       f"use a smaller every")  # fmt: skip
    gains = []
    for key, default in (("gain", gain), ("integral", Gains.integral)):
        value = spec.get(key, default)
        number_ = finite_float(value)
        if number_ is None or isinstance(value, bool) or not 0.0 <= number_ <= 2.0:
            raise MixError(f"{FEEDBACK_FIELD}.{key}", f"must be a number between 0 and 2 (got {value!r})")
        gains.append(float(number_))
    return int(number), Gains(*gains)


def closed_loop(spec: object, request_mix: Mapping, report: Mapping, calibration: Calibration | None,
                bounds: ExtrapolationBounds | None, max_tokens: int | None) -> Feedback:  # fmt: skip
    """A request's `feedback` object beside its target mix (`request_mix`, already resolved open loop into
    `report`) -> its Feedback. MixError naming the field: no target, a scorer that cannot run mid-reply, a bad knob."""
    if "target" not in request_mix or calibration is None:
        raise MixError(FEEDBACK_FIELD, 'needs a target in the same mix: {"target": {"ATTRIBUTE": SCORE}, '
                       '"feedback": {"every": 8}} (feedback steers the reply toward a target score)')  # fmt: skip
    partial = {a: calibration.partial[a] for a in report["target"] if a in calibration.partial}
    predictive = len(partial) == len(report["target"])  # every targeted attribute has a partial-reply model
    every, gains = parse_gains(spec, max_tokens, *((1.0, 4) if predictive else (Gains.proportional, 8)))
    extrapolate = request_mix.get("extrapolate") is True and bounds is not None
    loops, scorers = {}, {}
    for attr, target in report["target"].items():
        curve = calibration.curves[attr]
        if curve.scorer not in MID_REPLY_SCORERS:
            raise MixError(FEEDBACK_FIELD, f"{attr!r} is calibrated with scorer {curve.scorer!r}, which cannot run "
                           f"on a reply every few tokens; feedback needs one of {', '.join(sorted(MID_REPLY_SCORERS))} "
                           "(recalibrate with one, or drop feedback and keep the open-loop target)")  # fmt: skip
        lo, hi = curve.domain(bounds, extrapolate)
        slope = (curve.value(hi) - curve.value(lo)) / (hi - lo)
        if not slope:
            raise MixError(FEEDBACK_FIELD, f"the calibration of {attr!r} is flat on [{lo:g}, {hi:g}], so no alpha "
                           "moves its score; recalibrate the set")  # fmt: skip
        loops[attr] = Loop(float(target), float(report["alpha"][attr]), slope, lo, hi)
        scorers[attr] = curve.scorer
    mix = {k: request_mix[k] for k in ("lambda", "extrapolate") if k in request_mix}
    return Feedback(every, gains, loops, scorers, mix, partial if predictive else {})


Score = Callable[[str], float]  # text -> its score on the calibration's scale


class Steerer:
    """The engine's `steer` hook for one request: (choice index, text so far, generated tokens) -> coefficients
    [K] or None (keep the row's mix). Each choice keeps its own loop states and trajectory (n > 1 rows are steered
    on their own text). `scorers`: attribute -> its scoring function (built by the caller: serve, batch)."""

    def __init__(self, feedback: Feedback, scorers: Mapping[str, Score], layout: AnchorLayout) -> None:
        self.feedback, self._scorers, self._layout = feedback, scorers, layout
        # the loops' [lo, hi] are already the hull or the policy's bounds on the calibrated grid (closed_loop)
        lo = min([0.0, *(loop.lo for loop in feedback.loops.values())])
        hi = max([1.0, *(loop.hi for loop in feedback.loops.values())])
        self._bounds = ExtrapolationBounds(lo, hi, min(lo, -1.0), max(hi, 2.0))
        self._states: dict[int, dict[str, LoopState]] = {}
        self.trajectories: dict[int, list[dict]] = {}
        self.texts: dict[int, str] = {}
        self.generated: dict[int, int] = {}

    def __call__(self, choice: int, text: str, generated: int) -> tuple[float, ...] | None:
        self.texts[choice], self.generated[choice] = text, generated  # the last call of a row: its whole text
        if generated == 0 or generated % self.feedback.every:
            return None
        states = self._states.setdefault(choice, {a: LoopState(loop.start) for a, loop in self.feedback.loops.items()})
        scores = self.scores(text)
        for attr, loop in self.feedback.loops.items():
            if not math.isfinite(scores[attr]):  # no score yet (a grade of text with no words): the loop holds
                continue
            model = self.feedback.partial.get(attr)
            states[attr] = (
                update(loop, states[attr], scores[attr], self.feedback.gains)
                if model is None
                else predict(loop, model, states[attr], scores[attr], generated, self.feedback.gains.proportional)
            )
        alpha = {a: _clean(s.alpha) for a, s in states.items()}
        self.trajectories.setdefault(choice, []).append({"token": generated, "alpha": alpha, "score": _json(scores)})
        mix = {**self.feedback.mix, "alpha": alpha}
        if any(not 0.0 <= a <= 1.0 for a in alpha.values()):
            mix["extrapolate"] = True  # the loops stay in [0, 1] unless the request asked to extrapolate
        return resolve_mix(mix, self._layout, self._bounds)

    def scores(self, text: str) -> dict[str, float]:
        return {a: _clean(float(self._scorers[a](text))) for a in self.feedback.loops}

    def report(self, choice: int) -> dict:
        """What a choice of a reply reports: the loop's settings, the mixes it used, the score of its whole text."""
        start = {"token": 0, "alpha": {a: loop.start for a, loop in self.feedback.loops.items()}, "score": None}
        used = [t for t in self.trajectories.get(choice, []) if t["token"] < self.generated.get(choice, 0)]
        return {**self.feedback.report(), "trajectory": [start, *used],
                "final_score": _json(self.scores(self.texts.get(choice, "")))}  # fmt: skip


def _clean(value: float) -> float:
    return round(value, 6) + 0.0 if math.isfinite(value) else value


def _json(scores: dict[str, float]) -> dict[str, float | None]:
    """Scores as replies report them: null where a text has none (a grade of text with no words), never NaN."""
    return {a: s if math.isfinite(s) else None for a, s in scores.items()}

"""The whole `interpolation` object -> what the engine runs and what the reply reports (pure; no Ray, no torch).

On top of lerpray.mixing's forms (alpha/lambda, raw anchors, extrapolate) this adds:

* targets: ``{"target": {"sentiment": 0.7}, "lambda": {...}?, "extrapolate": true?}``: scores on the set's
  calibrated scale, turned into alphas by lerpray.targets (jointly when several), then resolved as an alpha mix;
* schedules: ``{"schedule": [{"until": 16, "mix": {...}}, {"mix": {...}}]}``: token i (0-based, generated tokens)
  uses the first piece with i < until; the last piece has no until and runs to the end of the reply;
* ramps: ``{"ramp": {"from": {...}, "to": {...}, "over": 32}}``: token i uses from + (to - from) * min(i / over, 1),
  linear in the coefficients (so linear in alpha when both ends share their lambdas).

Each piece and ramp end is any plain mix form, targets included; schedules do not nest. `Steering.pieces` and
`Steering.ramp` are exactly `lerpray.model.MixSchedule`'s fields. Every error is a MixError naming its field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lerpray.mixing import FIELD, AnchorLayout, ExtrapolationBounds, MixError, _as_float, _kind, _numbers, resolve_mix
from lerpray.targets import Calibration, solve_targets

__all__ = ["CalibrationSource", "Steering", "resolve_steering"]

# A calibration, or a function that loads it (called only when a mix has targets), or None (the set has none).
CalibrationSource = Calibration | Callable[[], Calibration | None] | None

_DEFAULT_BOUNDS = ExtrapolationBounds()

Coeffs = tuple[float, ...]  # [K]


@dataclass(frozen=True)
class Steering:
    coeffs: Coeffs  # [K] token 0's mix
    pieces: tuple[tuple[int | None, Coeffs], ...] = ()  # schedule: ((until, coeffs), ..., (None, coeffs))
    ramp: tuple[Coeffs, Coeffs, int] | None = None  # (start, end, over)
    resolved: dict | None = None  # the mix as the reply reports it: alphas/lambdas or weights, per piece

    @property
    def scheduled(self) -> bool:
        return bool(self.pieces) or self.ramp is not None


def resolve_steering(
    mix: object,
    layout: AnchorLayout,
    bounds: ExtrapolationBounds | None = _DEFAULT_BOUNDS,
    *,
    calibration: CalibrationSource = None,
    max_tokens: int | None = None,
) -> Steering:
    """Validate `mix` (the request's `interpolation`) and resolve it; `max_tokens` bounds schedule indices."""
    if isinstance(mix, Mapping) and ("schedule" in mix or "ramp" in mix):
        return _scheduled(mix, layout, bounds, calibration, max_tokens)
    coeffs, resolved = _plain(mix, FIELD, layout, bounds, calibration)
    return Steering(coeffs, resolved=resolved)


def _plain(mix: object, field: str, layout: AnchorLayout, bounds: ExtrapolationBounds | None,
           calibration: CalibrationSource) -> tuple[Coeffs, dict]:  # fmt: skip
    """One mix, targets included -> (coefficients [K], the resolved form); errors name fields under `field`."""
    try:
        if isinstance(mix, Mapping) and "target" in mix:
            mix, extra = _targets(mix, layout, bounds, calibration)
        else:
            extra = {}
        coeffs = resolve_mix(mix, layout, bounds)
    except MixError as err:
        raise MixError(err.field.replace(FIELD, field, 1), err.message) from None
    return coeffs, {**_report(mix, layout), **extra}


def _targets(mix: Mapping, layout: AnchorLayout, bounds: ExtrapolationBounds | None,
             calibration: CalibrationSource) -> tuple[dict, dict]:  # fmt: skip
    """{"target": ..., "lambda"?, "extrapolate"?} -> (the alpha mix it stands for, what the reply adds about it)."""
    allowed = ("target", "lambda", "extrapolate")
    unknown = [k for k in mix if k not in allowed]
    if unknown:
        why = "give targets or alphas, not both" if unknown[0] == "alpha" else f"allowed keys: {', '.join(allowed)}"
        raise MixError(f"{FIELD}.{unknown[0]}", f"cannot go with target; {why}")
    targets = _numbers(mix["target"], f"{FIELD}.target", list(layout.attributes), "attribute")
    extrapolate = mix.get("extrapolate", False) is True  # its type and the server's policy: checked by resolve_mix
    if callable(calibration):
        calibration = calibration()
    solution = solve_targets(targets, calibration, bounds, extrapolate and bounds is not None)
    alpha_mix = {k: v for k, v in mix.items() if k != "target"} | {"alpha": solution.alpha}
    if solution.alpha and any(not 0.0 <= a <= 1.0 for a in solution.alpha.values()):
        alpha_mix["extrapolate"] = True  # only reachable with extrapolate on (solve_targets kept it in [0, 1] else)
    return alpha_mix, {"target": dict(targets), **{k: v for k, v in solution.report().items() if k != "alpha"}}


def _report(mix: Mapping, layout: AnchorLayout) -> dict:
    """A validated plain mix as the reply reports it: alphas with their (normalised) lambdas, or raw weights."""
    if "anchors" in mix:
        out: dict = {"anchors": {k: float(v) for k, v in mix["anchors"].items()}}
    else:
        alpha = {k: float(v) for k, v in mix["alpha"].items()}
        lam = {k: float(v) for k, v in mix["lambda"].items()} if "lambda" in mix else {a: 1.0 for a in alpha}
        total = math.fsum(lam.values())
        out = {"alpha": alpha, "lambda": {a: round(w / total, 12) for a, w in lam.items()}}
    return {**out, "extrapolate": True} if mix.get("extrapolate") is True else out


def _scheduled(mix: Mapping, layout: AnchorLayout, bounds: ExtrapolationBounds | None,
               calibration: CalibrationSource, max_tokens: int | None) -> Steering:  # fmt: skip
    kind = "schedule" if "schedule" in mix else "ramp"
    for key in mix:
        if key != kind:
            why = "give a schedule or a ramp, not both" if key in ("schedule", "ramp") else (
                "put it in each piece's mix instead")  # fmt: skip
            raise MixError(f"{FIELD}.{key}", f"cannot go with {kind}; {why}")
    if kind == "ramp":
        return _ramp(mix["ramp"], layout, bounds, calibration, max_tokens)
    pieces = mix["schedule"]
    field = f"{FIELD}.schedule"
    if not isinstance(pieces, list) or not pieces:
        got = "an empty array" if isinstance(pieces, list) else _kind(pieces)
        raise MixError(field, 'must be a non-empty array of pieces such as [{"until": 16, "mix": {...}}, '
                       f'{{"mix": {{...}}}}] (got {got})')  # fmt: skip
    out: list[tuple[int | None, Coeffs]] = []
    resolved: list[dict] = []
    previous = 0
    for i, piece in enumerate(pieces):
        at = f"{field}[{i}]"
        last = i == len(pieces) - 1
        _check_keys(piece, at, ("until", "mix"))
        until = None
        if last and "until" in piece:
            raise MixError(f"{at}.until", "the last piece must have no until (it runs to the end of the reply); "
                           'add a final piece {"mix": {...}} without until')  # fmt: skip
        if not last:
            if "until" not in piece:
                raise MixError(f"{at}.until", "is required on every piece but the last (only the last runs open)")
            until = _index(piece["until"], f"{at}.until", max_tokens)
            if until < previous:
                raise MixError(f"{at}.until", f"pieces must be in order of until: {until} comes after {previous}")
            if until == previous:
                what = (
                    "is empty (until 0: no token uses it)"
                    if until == 0
                    else f"overlaps the previous piece (both end at {until})"
                )
                raise MixError(f"{at}.until", f"{what}; every until must be larger than the one before it")
            previous = until
        coeffs, report = _piece_mix(piece, f"{at}.mix", layout, bounds, calibration)
        out.append((until, coeffs))
        resolved.append({**({} if until is None else {"until": until}), "mix": report})
    return Steering(out[0][1], pieces=tuple(out), resolved={"schedule": resolved})


def _ramp(ramp: object, layout: AnchorLayout, bounds: ExtrapolationBounds | None, calibration: CalibrationSource,
          max_tokens: int | None) -> Steering:  # fmt: skip
    field = f"{FIELD}.ramp"
    _check_keys(ramp, field, ("from", "to", "over"), required=("from", "to", "over"))
    over = _index(ramp["over"], f"{field}.over", max_tokens)
    if over == 0:
        raise MixError(f"{field}.over", "must be >= 1 (the number of tokens the ramp takes)")
    start, start_report = _piece_mix(ramp, f"{field}.from", layout, bounds, calibration, key="from")
    end, end_report = _piece_mix(ramp, f"{field}.to", layout, bounds, calibration, key="to")
    return Steering(start, ramp=(start, end, over), resolved={"ramp": {"from": start_report, "to": end_report,
                                                                       "over": over}})  # fmt: skip


def _piece_mix(piece: Mapping, field: str, layout: AnchorLayout, bounds: ExtrapolationBounds | None,
               calibration: CalibrationSource, key: str = "mix") -> tuple[Coeffs, dict]:  # fmt: skip
    if key not in piece:
        raise MixError(field, "is required: the mix this piece uses (alpha/lambda, anchors or target)")
    mix = piece[key]
    if isinstance(mix, Mapping):
        for nested in ("schedule", "ramp"):
            if nested in mix:
                raise MixError(f"{field}.{nested}", "schedules do not nest; give a plain mix (alpha/lambda, anchors or "
                               "target) here")  # fmt: skip
    return _plain(mix, field, layout, bounds, calibration)


def _check_keys(value: object, field: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    if not isinstance(value, Mapping):
        raise MixError(field, f"must be an object with keys {', '.join(allowed)} (got {_kind(value)})")
    for key in value:
        if key not in allowed:
            raise MixError(f"{field}.{key}", f"unknown key; allowed keys: {', '.join(allowed)}")
    for key in required:
        if key not in value:
            raise MixError(f"{field}.{key}", "is required")


def _index(value: object, field: str, max_tokens: int | None) -> int:
    """A generated-token count: a whole number >= 0, at most max_tokens."""
    number = _as_float(value)
    if number is None or number != int(number) or number < 0:
        raise MixError(
            field, f"must be a whole number of generated tokens >= 0 (got {_kind(value) if number is None else value})"
        )
    if max_tokens is not None and number > max_tokens:
        raise MixError(field, f"{int(number)} is beyond max_tokens {max_tokens}, so it would never be reached; "
                       f"lower it to at most {max_tokens} or raise max_tokens")  # fmt: skip
    return int(number)

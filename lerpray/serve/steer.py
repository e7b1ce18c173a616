"""A request's steering on the server: its mix (schedules, ramps and targets included) and how replies report it.

protocol.generation_request calls `request_steering` for the coefficients and schedule the engine runs; replies
carry `resolved_mix` in the JSON body and `x-lerpray-mix` as a header (the only place a stream can say it before
its first token). The served set's calibration (lerpray/anchors/calibration.py) is read at the first request with a
target and kept per set URI (a version's calibration is fixed once written: a new one comes with a restart or a new
version); a set without one, or with one made for another version, answers targets with a 400 saying what to do.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable

from lerpray.mixing import AnchorLayout, MixError, default_mix
from lerpray.model.requests import MixSchedule
from lerpray.serve import model_ids
from lerpray.serve.config import ServeArgs
from lerpray.serve.schemas import ChatCompletionRequest, CompletionRequest
from lerpray.steering import Steering, resolve_steering
from lerpray.targets import Calibration

__all__ = ["MIX_HEADER", "calibration_loader", "load_calibration", "mix_headers", "request_steering", "schedule_of"]

MIX_HEADER = "x-lerpray-mix"
logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=16)
def load_calibration(anchors: str) -> Calibration | None:
    """The calibration beside the set at `anchors`, or None without one (CalibrationError: unusable)."""
    from lerpray.anchors import open_set
    from lerpray.anchors.calibration import read_calibration

    calibration = read_calibration(open_set(anchors))
    if calibration is not None:
        logger.info("calibration loaded for %s: %s", anchors, ", ".join(calibration.curves))
    return calibration


def calibration_loader(args: ServeArgs) -> Callable[[], Calibration | None]:
    """Loads the served set's calibration when a target needs it; its problems become 400s naming the target."""

    def load() -> Calibration | None:
        from lerpray.anchors import AnchorSetError

        try:
            return load_calibration(str(args.anchors))
        except AnchorSetError as err:
            raise MixError("interpolation.target", f"this anchor set's calibration cannot be used: {err}") from None

    return load


def request_steering(
    parsed: CompletionRequest | ChatCompletionRequest,
    args: ServeArgs,
    layout: AnchorLayout,
    max_tokens: int,
    calibration: Calibration | Callable[[], Calibration | None] | None = None,
) -> Steering:
    """The body's `interpolation` if it has one, else the model id's mix (already checked by model_coeffs)."""
    bounds = args.bounds()
    calibration = calibration_loader(args) if calibration is None else calibration
    if parsed.interpolation is not None:
        return resolve_steering(parsed.interpolation, layout, bounds, calibration=calibration, max_tokens=max_tokens)
    model = parsed.model
    if model is None or model == args.model_name:
        mix = default_mix(layout)
    elif model in args.presets:
        mix = args.presets[model].as_mix()
    else:
        mix = model_ids.parse_inline_mix(model_ids.inline_spec(model, args.model_name) or "")
    return resolve_steering(mix, layout, bounds)


def schedule_of(steering: Steering) -> MixSchedule | None:
    return MixSchedule(pieces=steering.pieces, ramp=steering.ramp) if steering.scheduled else None


def mix_headers(resolved: dict | None) -> dict[str, str]:
    """The resolved mix (Steering.resolved) as a response header (compact JSON, ASCII)."""
    return {MIX_HEADER: json.dumps(resolved, separators=(",", ":"), ensure_ascii=True)}

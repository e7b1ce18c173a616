"""The quickstart's last demo: ask for outcomes instead of mixes (`{"target": {"sentiment": t}}`).

1. Calibrate from the requests already made (alpha 0, 0.5, 1 on the review openers, scored by VADER): the same
   checks and fit as `lerpray eval calibrate` (lerpray.eval.calibrate.calibration_document), saved beside the set,
   where the server reads it at the first target request. A calibration that is refused (mostly empty replies, or
   a curve flat within its noise, as a few training steps leave it) is printed with its reason; no target is sent.
2. Three targets, at 10, 50 and 90 % of the reachable range, on held-out prompts of other domains (the shipped
   openings' odd half, which the calibration never saw), a few seeds each, through the running server.
3. Each target's achieved mean VADER with a 95 % interval (bootstrap over prompts) and the error against it.

No extra generation is spent on the calibration, so the demo costs three batches of target requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lerpray.quickstart.steps import ATTRIBUTE, Generation

if TYPE_CHECKING:
    from lerpray.eval.calibration_partial import Prefixes

__all__ = ["LEVELS", "TargetOutcome", "calibrate_from_generations", "run_target_demo"]

LEVELS = (0.1, 0.5, 0.9)  # targets at these fractions of the reachable range


@dataclass(frozen=True)
class TargetOutcome:
    target: float
    alpha: float  # where the calibration puts it (what the server resolves it to)
    mean: float  # achieved mean VADER over every reply
    low: float  # 95 % bootstrap interval over prompts
    high: float
    n: int

    def line(self, span: float) -> str:
        error = abs(self.mean - self.target) / span if span > 0 else float("nan")
        return (f"  target {self.target:+.3f} (alpha {self.alpha:.2f}): achieved {self.mean:+.3f} "
                f"[95% {self.low:+.3f}, {self.high:+.3f}], n={self.n}, off by {error:.0%} of the range")  # fmt: skip


def calibrate_from_generations(generations: Sequence[Generation], max_tokens: int, *, resamples: int = 200,
                               prefixes: Prefixes | None = None) -> dict:
    """The calibration document of the quickstart's requests (CalibrationRefused when it could not steer); with
    `prefixes` (the base model's tokenizer, calibration_partial.tokenizer_prefixes) also the partial-reply model a
    closed loop (`"feedback"`) on this set then uses."""
    from lerpray.configs import SamplingSettings
    from lerpray.eval.calibrate import calibration_document
    from lerpray.eval.scorers import get_scorer

    prompts = sorted({g.prompt for g in generations})
    table = pd.DataFrame({"attribute": ATTRIBUTE, "x": [g.alpha for g in generations],
                          "prompt_id": [prompts.index(g.prompt) for g in generations],
                          "text": [g.text for g in generations], "score.vader": [g.score for g in generations]})  # fmt: skip
    seeds = len({g.seed for g in generations})
    provenance = {"source": "lerpray quickstart review openers (its requests stage)", "count": len(prompts),
                  "chat": False, "samples": seeds, "seed": 0}  # fmt: skip
    sampling = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=max_tokens)
    hint = "Nothing was saved beside the set; the demo's targets are skipped."
    return calibration_document(table, [("vader", get_scorer("vader"))], provenance, sampling, resamples=resamples,
                                hint=hint, prefixes=prefixes)  # fmt: skip


def run_target_demo(
    url: str, anchors_dir: Path, generations: Sequence[Generation], *, prompts: int, samples: int, max_tokens: int,
    say: Callable[[str], None], prefixes: Prefixes | None = None,
) -> list[TargetOutcome]:  # fmt: skip
    """Calibrate from `generations`, save it beside the set, ask three targets on `prompts` held-out openings x
    `samples` seeds; print what happened with `say`. [] when the calibration was refused."""
    from lerpray.anchors import open_store
    from lerpray.anchors.calibration import calibration_of, save_calibration
    from lerpray.eval.calibration_checks import CalibrationRefused

    try:
        doc = calibrate_from_generations(generations, max_tokens, prefixes=prefixes)
    except CalibrationRefused as refused:
        say(f"      calibration refused: {refused}")
        return []
    save_calibration(open_store(anchors_dir), doc)
    curve = calibration_of(doc).curves[ATTRIBUTE]
    low, high = curve.reachable(0.0, 1.0)
    signal, noise = doc["curves"][ATTRIBUTE]["signal"], doc["curves"][ATTRIBUTE]["noise_share"]
    say(f"      calibration (from the requests above, saved beside the set): VADER {curve.value(0):+.3f} at alpha 0 "
        f"-> {curve.value(1):+.3f} at alpha 1; per prompt {signal['change']:+.3f} ± {signal['se']:.3f} (SE); its "
        f"90% band takes {noise['band_over_range']:.0%} of the range")  # fmt: skip
    say(f"      (the full calibration: lerpray eval calibrate {anchors_dir} --scorers vader --out DIR)")
    targets = [round(low + level * (high - low), 4) for level in LEVELS]
    outcomes = ask_targets(url, targets, prompts=prompts, samples=samples, max_tokens=max_tokens)
    outcomes = [TargetOutcome(o.target, curve.invert(o.target, 0.0, 1.0), o.mean, o.low, o.high, o.n) for o in outcomes]
    say(f"      {len(targets)} targets x {prompts} held-out prompts (other domains) x {samples} seeds:")
    for outcome in outcomes:
        say(outcome.line(high - low))
    return outcomes


def ask_targets(
    url: str, targets: Sequence[float], *, prompts: int, samples: int, max_tokens: int
) -> list[TargetOutcome]:
    """Every target on the first `prompts` held-out openings x `samples` seeds (seeds 1000+, unlike the requests')."""
    from lerpray.configs import SamplingSettings
    from lerpray.eval.backends import generate_http
    from lerpray.eval.grid import make_jobs
    from lerpray.eval.prompt_sets import load_prompt_set
    from lerpray.eval.scorers import get_scorer

    texts = list(load_prompt_set(split="odd").texts[:prompts])
    jobs = make_jobs(len(targets), len(texts), samples, seed=1000)
    sampling = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=max_tokens)
    mixes = [{"target": {ATTRIBUTE: t}} for t in targets]
    results = generate_http(url, mixes, texts, jobs, sampling, model="lerpray", concurrency=min(64, len(jobs)),
                            timeout_s=3600)  # fmt: skip
    scores = np.asarray(get_scorer("vader").score([r.text for r in results]))
    outcomes = []
    for k, target in enumerate(targets):
        mine = [i for i, j in enumerate(jobs) if j.point == k]
        per_prompt = pd.Series(scores[mine]).groupby([jobs[i].prompt for i in mine]).mean().to_numpy()  # [P]
        low, high = _interval(per_prompt)
        outcomes.append(TargetOutcome(target, float("nan"), float(scores[mine].mean()), low, high, len(mine)))
    return outcomes


def _interval(per_prompt: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap of the mean over prompts (every prompt has the same number of seeds)."""
    rng = np.random.default_rng(seed)
    draws = per_prompt[rng.integers(0, len(per_prompt), size=(resamples, len(per_prompt)))].mean(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)

"""Is a calibration worth saving? Checks on an attribute's alpha sweep before its curve is stored (pure pandas/numpy).

A calibration is refused (CalibrationRefused, nothing saved beside the set) when

- most replies are empty or unscorable: more than `max_unscorable` of them have no text (e.g. instruction prompts
  sent as raw completions to an instruct model end at once) or no score; the curve would describe empty text;
- its curve is flat: the change of the mean score from alpha 0 to alpha 1 lies within `min_z` standard errors of
  zero. The change and its standard error are taken per prompt (each prompt's mean at alpha 1 minus its own mean
  at alpha 0, so the prompts' different baselines cancel) and bootstrapped over prompts::

      d_p = mean(score | p, alpha 1) - mean(score | p, alpha 0)      d = mean_p d_p
      se = std of mean(d_p over a resample of the prompts with replacement)      refuse when |d| < min_z * se

The same per-prompt view gives the `change` curve stored beside the mean curve: the mean over prompts of each
prompt's score at alpha minus its own score at alpha 0, with its bootstrap band, and `noise_share`, how much of the
reachable range the calibration's own 90 % band takes (band width at alpha 1 over |fit(1) - fit(0)|).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["CalibrationRefused", "check_replies", "check_signal", "prompt_change"]


class CalibrationRefused(ValueError):
    """A calibration too empty or too flat to steer by; the message says why and what to change."""


def check_replies(rows: pd.DataFrame, column: str, attribute: str, *, max_unscorable: float, hint: str) -> float:
    """The fraction of an attribute's replies that are empty or unscorable; CalibrationRefused above the limit.

    rows: the attribute's sweep rows with `text` and the score `column`."""
    text = rows["text"].fillna("").astype(str).str.strip()
    bad = (text == "") | rows[column].isna()
    fraction = float(bad.mean()) if len(rows) else 1.0
    if fraction > max_unscorable:
        empty = int((text == "").sum())
        raise CalibrationRefused(
            f"{attribute}: {int(bad.sum())} of {len(rows)} replies ({fraction:.0%}; {empty} empty) are empty or "
            f"unscorable by {column.removeprefix('score.')}, so the curve would describe no text. The model did "
            f"not answer the prompts in the form they were sent: give completion prompts (the default set), send "
            f"instruction prompts through the chat template (--chat), or raise --max-tokens. {hint}"
        )
    return round(fraction, 6)


def prompt_change(
    rows: pd.DataFrame, column: str, alphas: np.ndarray, *, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-prompt change from alpha 0: (mean change per alpha [G], its 5th and 95th bootstrap percentiles [G], the
    bootstrap draws of the alpha 0 -> 1 change [B]). Only prompts scored at every alpha count."""
    means = rows.dropna(subset=[column]).pivot_table(index="prompt_id", columns="x", values=column, aggfunc="mean")
    means = means.reindex(columns=alphas).dropna()  # [P, G] each prompt's mean score per alpha
    change = means.to_numpy() - means[[0.0]].to_numpy()  # [P, G] minus the prompt's own alpha-0 mean
    if len(change) == 0:
        return np.full(len(alphas), np.nan), np.full(len(alphas), np.nan), np.zeros(0)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(change), size=(resamples, len(change)))  # [B, P]
    draws = change[picks].mean(axis=1)  # [B, G]
    lo, hi = np.percentile(draws, [5, 95], axis=0)
    one = list(alphas).index(1.0)
    return change.mean(axis=0), np.vstack([lo, hi]), draws[:, one]


def check_signal(
    change_at_1: float, draws: np.ndarray, attribute: str, scorer: str, prompts: int, *, min_z: float, hint: str
) -> dict:
    """The alpha 0 -> 1 change against its bootstrap standard error; CalibrationRefused when it is within noise."""
    se = float(np.std(draws, ddof=1)) if len(draws) > 1 else 0.0
    z = abs(change_at_1) / se if se > 0 else (np.inf if abs(change_at_1) > 0 else 0.0)
    if not np.isfinite(change_at_1) or prompts < 2 or z < min_z:
        raise CalibrationRefused(
            f"{attribute}: the {scorer} score moves {change_at_1:+.4f} from alpha 0 to alpha 1 (per prompt, mean of "
            f"{prompts} prompts), which is within {min_z:g} standard errors (se {se:.4f}, bootstrap over prompts) "
            f"of no change: the curve is flat within its own noise, so a target would resolve to an arbitrary "
            f"alpha. Use anchors that move this scorer (train longer or at a higher learning rate; check with "
            f"`lerpray eval sweep`), a scorer that measures what the anchors change, or more prompts and --samples "
            f"to resolve a small change. {hint}"
        )
    return {"change": round(float(change_at_1), 6), "se": round(se, 6), "z": round(float(min(z, 1e9)), 3),
            "min_z": min_z}  # fmt: skip

"""Pure planning of a batch job: input rows x mixes -> plan rows with resolved coefficients and seeds (no Ray).

A mix is anything the server's `interpolation` takes, resolved by the server's own entry point
(`lerpray.steering.resolve`, against the set's `MixContext`: layout, policy, calibration read when the job opened the
set): plain mixes, calibrated targets, per-token schedules and ramps. A row's `resolved_mix` column is the
ResolvedMix's one JSON form (the server's replies carry the same), from which each actor rebuilds what the engine
runs. A bad mix or prompt stops the job here, before any model loads, with each row and field named.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

import pyarrow as pa

from lerpray.mixing import FIELD as MIX_FIELD
from lerpray.mixing import MixError
from lerpray.steering import MixContext, ResolvedMix, resolve

__all__ = ["MAX_REPORTED_PROBLEMS", "OUTPUT_SCHEMA", "PLAN_SCHEMA", "BatchInputError", "plan_rows", "row_seed"]

PLAN_SCHEMA = pa.schema([
    ("row_id", pa.int64()),  # the prompt's position in the input, from 0
    ("mix_index", pa.int64()),  # index into the config's mix grid; 0 for a row's own mix
    ("prompt", pa.string()),
    ("mix", pa.string()),  # the mix as JSON (keys sorted)
    ("coefficients", pa.list_(pa.float64())),  # [K] in the anchor set's order; token 0's under a schedule
    ("resolved_mix", pa.string()),  # ResolvedMix.report as JSON: every token's coefficients, as replies say it
    ("seed", pa.int64()),
])
OUTPUT_SCHEMA = pa.schema([*PLAN_SCHEMA, ("text", pa.string()), ("prompt_tokens", pa.int64()),
                           ("completion_tokens", pa.int64()), ("finish_reason", pa.string())])
MAX_REPORTED_PROBLEMS = 10


class BatchInputError(ValueError):
    """Input rows or mixes the job cannot run; the message names each row and field to change."""


def row_seed(base_seed: int, row_id: int) -> int:
    """A stable 63-bit seed for input row `row_id` (never Python's salted hash())."""
    digest = hashlib.blake2b(f"{base_seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def plan_rows(
    rows: Iterable[Mapping],
    mixes: MixContext,
    *,
    grid: list[Mapping] | None = None,
    base_seed: int = 0,
    max_tokens: int | None = None,
    prompt_field: str = "prompt",
    mix_field: str = MIX_FIELD,
    seed_field: str = "seed",
) -> list[dict]:
    """One plan row (see PLAN_SCHEMA) per input row x mix, in (row_id, mix_index) order. `mixes` is what the mixes
    resolve against; `max_tokens` bounds schedule indices (an `until` beyond it is refused).

    Raises:
        BatchInputError: listing the first problems, each as "input row N: field: what to change" (or "mixes.I: ...").
    """
    def steer(mix: object) -> ResolvedMix:
        return resolve(mixes, interpolation=mix, max_tokens=max_tokens)

    grid_mixes = _resolve_grid(grid, steer) if grid is not None else None
    plan: list[dict] = []
    problems: list[str] = []
    for row_id, row in enumerate(rows):
        try:
            plan.extend(_plan_row(row_id, row, steer, grid_mixes, base_seed, prompt_field, mix_field, seed_field))
        except (MixError, BatchInputError) as err:
            problems.append(f"  input row {row_id}: {err}")
            if len(problems) == MAX_REPORTED_PROBLEMS:
                problems.append("  ... (stopped at the first problems)")
                break
    if problems:
        raise BatchInputError("the input has rows the job cannot run (rows count from 0 in input order):\n"
                              + "\n".join(problems))
    if not plan:
        raise BatchInputError("the input has no rows; check input.paths")
    return plan


def _columns(mix: object, resolved: ResolvedMix) -> dict:
    """The plan columns of one resolved mix."""
    return {"mix": json.dumps(mix, sort_keys=True), "coefficients": list(resolved.coeffs),
            "resolved_mix": json.dumps(resolved.report, sort_keys=True)}


def _resolve_grid(grid, steer) -> list[dict]:
    resolved = []
    for i, mix in enumerate(grid):
        try:
            resolved.append(_columns(mix, steer(mix)))
        except MixError as err:
            raise BatchInputError(f"mixes.{i}: {err}") from None
    return resolved


def _plan_row(row_id, row, steer, grid_mixes, base_seed, prompt_field, mix_field, seed_field) -> list[dict]:
    prompt = row.get(prompt_field)
    if not isinstance(prompt, str) or not prompt:
        raise BatchInputError(f"{prompt_field}: missing or not a non-empty string; every row needs a prompt")
    seed = _given_seed(row.get(seed_field), seed_field)
    seed = row_seed(base_seed, row_id) if seed is None else seed
    own = _strip_nulls(row.get(mix_field))
    if grid_mixes is not None:
        if own is not None:
            raise BatchInputError(f"{mix_field}: the row has its own mix but the config sets `mixes` (a grid for "
                                  f"every row); remove one of them")
        mixes = grid_mixes
    elif own is None:
        raise BatchInputError(f"{mix_field}: missing; give every row a mix, or set `mixes` in the config")
    else:
        mixes = [_own_mix(own, steer, mix_field)]
    return [{"row_id": row_id, "mix_index": i, "prompt": prompt, **columns, "seed": seed}
            for i, columns in enumerate(mixes)]


def _own_mix(value, steer, mix_field) -> dict:
    if isinstance(value, str):  # Parquet users often store the mix as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise BatchInputError(f"{mix_field}: not valid JSON ({err.msg} at char {err.pos})") from None
    try:
        resolved = steer(value)
    except MixError as err:  # name the input's own column, not the HTTP field
        raise BatchInputError(f"{mix_field}{err.field.removeprefix(MIX_FIELD)}: {err.message}") from None
    return _columns(value, resolved)


def _given_seed(value, field: str) -> int | None:
    if value is None:
        return None
    try:
        seed = int(value)  # NaN, inf and non-numbers raise; 1.5 and "5" do not compare equal below
        ok = not isinstance(value, bool) and seed == value and 0 <= seed < 2**63
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise BatchInputError(f"{field}: must be a whole number >= 0 and < 2**63 (got {value!r})")
    return seed


def _strip_nulls(value):
    """Arrow gives every row of a struct column every key, null where the JSON line had none: drop those."""
    if isinstance(value, Mapping):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    return value

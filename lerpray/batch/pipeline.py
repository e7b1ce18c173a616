"""Offline generation on Ray Data: prompts (JSONL / Parquet, local or s3://) x mixes -> a pool of engine actors ->
one output row per prompt x mix (Parquet / JSONL, local or s3://).

    plan (driver)   read the prompt rows with Ray Data in input order (files sorted by path, then row order) and
                    number them from 0; resolve every mix against the anchor set's layout, so a bad mix stops the
                    job before any model loads, naming the row and the field; cross with the config's mix grid;
                    give each row its seed. The result is the plan: one row per output row.
    generate        map_batches over fixed blocks of `batch_size` plan rows on a fixed-size actor pool; each actor
                    builds its Engine once. A dead actor is restarted and its batch re-run (max_restarts,
                    max_task_retries); the write only sees each batch's successful run.
    write + verify  Ray Data writes the files; the driver reads back the (row_id, mix_index) keys and checks there
                    is exactly one output row per plan row.

Determinism: row i samples with seed hash(base seed, i) unless it gives its own, and every mix of a row shares
that seed (a grid compares mixes under one random stream). Blocks are cut on the driver, so each batch, and with
it the float rounding of the batched forward passes, is the same from run to run.

The prompts (not the generations) pass through the driver; that is fine for millions of short prompts.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lerpray.batch.plan import OUTPUT_SCHEMA, PLAN_SCHEMA, BatchInputError, plan_rows
from lerpray.configs import absolute_base_model, absolute_uri, check_shared
from lerpray.model.loading import load_engine

__all__ = ["BatchSummary", "GenerateBatch", "load_engine", "run_batch"]


@dataclass(frozen=True)
class BatchSummary:
    output: str
    input_rows: int
    mixes_per_row: int
    expected_rows: int  # input_rows x mixes_per_row
    written_rows: int
    missing: int  # plan rows with no output row
    duplicates: int  # output rows beyond the first for one (row_id, mix_index)
    unexpected: int  # output keys that are not in the plan
    prompt_tokens: int
    completion_tokens: int
    seconds: float

    @property
    def complete(self) -> bool:
        return self.written_rows == self.expected_rows and not (self.missing or self.duplicates or self.unexpected)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0



# ---- the actors ---------------------------------------------------------------------------------------------------


class GenerateBatch:
    """Ray Data actor UDF: builds the engine once, then turns plan batches (pyarrow) into output batches."""

    def __init__(self, engine_factory: Callable, engine_kwargs: dict, sampling: dict, chat: bool) -> None:
        self.engine = engine_factory(**engine_kwargs)
        self.sampling, self.chat = sampling, chat

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        requests = [self._request(row) for row in rows]
        results = self._generate(requests, rows)
        out = [{**row, "text": r.text, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "finish_reason": r.finish_reason, **_steered(q)} for row, r, q in zip(rows, results, requests, strict=True)]
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)

    def _request(self, row: dict):
        from lerpray.eval.steer import steerer
        from lerpray.model.requests import GenerationRequest
        from lerpray.model.sampling import SamplingParams
        from lerpray.steering import ResolvedMix
        from lerpray.targets import reply_min_tokens

        mix = ResolvedMix.from_json(json.loads(row["resolved_mix"]))
        asked = {k: v for k, v in self.sampling.items() if k != "min_tokens"}
        length = reply_min_tokens(mix.report, self.sampling.get("min_tokens"), asked["max_tokens"])
        sampling = SamplingParams(**asked, min_tokens=length, seed=row["seed"])
        text = {"messages": [{"role": "user", "content": row["prompt"]}]} if self.chat else {"prompt": row["prompt"]}
        steer = None if mix.feedback is None else steerer(mix.feedback, self.engine.layout)  # closed loop per row
        return GenerationRequest(mix=mix, sampling=sampling, request_id=f"{row['row_id']}:{row['mix_index']}",
                                 steer=steer, **text)  # fmt: skip

    def _generate(self, requests: list, rows: list[dict]) -> list:
        from lerpray.model.requests import EngineError

        try:
            return self.engine.generate(requests)
        except EngineError as err:
            bad = next((row for row, r in zip(rows, requests, strict=True) if self._fails(r)), None)
            where = f"input row {bad['row_id']}" if bad else f"one of input rows {rows[0]['row_id']}-{rows[-1]['row_id']}"
            raise BatchInputError(f"{where}: {err}") from err

    def _fails(self, request) -> bool:
        from lerpray.model.requests import EngineError

        try:
            ids = self.engine.encode(request)
        except EngineError:
            return True
        return len(ids) > self.engine.context_length - request.sampling.max_tokens


def _steered(request) -> dict:
    """A closed-loop row's output `resolved_mix`: its start and loop, the mixes it used and its final score."""
    if request.steer is None:
        return {}
    return {"resolved_mix": json.dumps({**request.mix.report, "feedback": request.steer.report(0)}, sort_keys=True)}


# ---- the job ------------------------------------------------------------------------------------------------------


def run_batch(config, *, engine_factory: Callable = load_engine) -> BatchSummary:
    """Plan, generate and write a batch job (a BatchJobConfig) on the current Ray cluster; verify the output.

    `engine_factory(**engine_kwargs)` builds each actor's engine (tests pass a wrapper; must pickle).
    """
    import ray
    import ray.data

    from lerpray.anchors import open_set, open_store, read_manifest
    from lerpray.anchors.calibration import load_calibration
    from lerpray.steering import MixContext

    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    for field, uri in (("anchors", config.anchors), ("output.path", config.output.path)):
        check_shared(field, uri, nodes)  # actors load the set and write the output on any node; the input is read here
    start = time.perf_counter()
    s3 = config.s3.options()  # endpoint_url / region where set (the config refuses a profile)
    anchor_set = open_set(open_store(config.anchors, **s3))
    bounds = None if config.extrapolation is None else config.extrapolation.to_bounds()
    mixes = MixContext(read_manifest(anchor_set).layout(), bounds, *load_calibration(anchor_set))
    in_fs, in_paths = _filesystem([absolute_uri(p) for p in config.input.paths], **s3)
    out_fs, (out_path,) = _filesystem([absolute_uri(config.output.path)], **s3)
    _prepare_output(out_fs, out_path, config.output.overwrite)
    fields = config.input
    with _data_context(progress=config.progress):
        plan = plan_rows(_read_rows(in_paths, fields.resolved_format(), in_fs), mixes, grid=config.mixes,
                         base_seed=config.sampling.seed, max_tokens=config.sampling.max_tokens,
                         prompt_field=fields.prompt_field, mix_field=fields.mix_field, seed_field=fields.seed_field)
        table = pa.Table.from_pylist(plan, schema=PLAN_SCHEMA)
        size = config.resources.batch_size
        blocks = [table.slice(i, size) for i in range(0, table.num_rows, size)]
        with warnings.catch_warnings():
            # Ray 2.5x deprecates **ray_remote_args but names no replacement for the actors' retry policy.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            generated = ray.data.from_arrow(blocks).map_batches(
                GenerateBatch,
                fn_constructor_kwargs=_actor_kwargs(config, engine_factory, s3),
                batch_size=size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=config.resources.num_actors),
                num_cpus=config.resources.num_cpus_per_actor,
                num_gpus=config.resources.num_gpus_per_actor or None,
                max_restarts=config.resources.max_restarts,
                max_task_retries=config.resources.max_task_retries,
            )
        write = generated.write_parquet if config.output.format == "parquet" else generated.write_json
        try:
            write(out_path, filesystem=out_fs, min_rows_per_file=config.output.min_rows_per_file)
        except Exception as err:  # Ray Data wraps an actor's exception: its type is lost on the way, its text is not
            found = re.search(r"BatchInputError: (.+)", str(err))
            if found is None:
                raise
            raise BatchInputError(found.group(1)) from err
    return _verify(table, config.output.path, out_path, out_fs, config.output.format, start,
                   mixes_per_row=len(config.mixes) if config.mixes else 1)


def _actor_kwargs(config, engine_factory: Callable, s3: dict) -> dict:
    res, base = config.resources, absolute_base_model(config.base_model)  # actors run in another directory
    return {
        "engine_factory": engine_factory,
        "engine_kwargs": {"anchors": absolute_uri(config.anchors), "base_model": base, "dtype": res.dtype,
                          "device": "cuda" if res.num_gpus_per_actor > 0 else "cpu",
                          "max_batch_size": res.batch_size, **res.kv_engine_kwargs(), **s3},
        "sampling": {k: v for k, v in config.sampling.engine_kwargs().items()  # unset min_tokens: a target's
                     if k != "min_tokens" or "min_tokens" in config.sampling.model_fields_set},  # calibration's
        "chat": config.input.chat,
    }


def _read_rows(paths: list[str], fmt: str, filesystem) -> Iterator[dict]:
    import ray.data

    read = ray.data.read_parquet if fmt == "parquet" else ray.data.read_json
    for batch in read(paths, filesystem=filesystem).iter_batches(batch_format="pyarrow", batch_size=None):
        yield from batch.to_pylist()


@contextmanager
def _data_context(progress: bool):
    """Ray Data keeps input order (the plan's blocks reach the writer in order) and shows progress bars or not."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, progress
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def _filesystem(uris: list[str], endpoint_url: str | None = None, region: str | None = None):
    """(pyarrow filesystem, paths): S3 with the anchor store's settings for s3:// URIs, else local."""
    import pyarrow.fs as pafs

    from lerpray.anchors.s3 import arrow_filesystem

    if not any(u.startswith("s3://") for u in uris):
        return pafs.LocalFileSystem(), uris
    if not all(u.startswith("s3://") for u in uris):
        raise BatchInputError(f"mix of s3:// and local paths in {uris}; put all inputs in one place")
    return arrow_filesystem(endpoint_url, region), [u.removeprefix("s3://") for u in uris]


def _prepare_output(fs, path: str, overwrite: bool) -> None:
    """Refuse a non-empty output folder (the completeness check would count old files), or empty it."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise BatchInputError(f"output.path {path!r} is a file; give a folder")
    if info.type == pafs.FileType.NotFound or not fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        return
    if not overwrite:
        raise BatchInputError(f"output.path {path!r} is not empty; choose a new folder or set output.overwrite: "
                              "true to replace what is there")
    fs.delete_dir_contents(path)


def _verify(plan: pa.Table, output: str, path: str, fs, fmt: str, start: float, mixes_per_row: int) -> BatchSummary:
    """Read back the output's keys and token counts and compare them with the plan."""
    import pyarrow.dataset as pads

    columns = ["row_id", "mix_index", "prompt_tokens", "completion_tokens"]
    written = pads.dataset(path, filesystem=fs, format="parquet" if fmt == "parquet" else "json").to_table(columns)
    expected = set(zip(plan["row_id"].to_pylist(), plan["mix_index"].to_pylist(), strict=True))
    keys = list(zip(written["row_id"].to_pylist(), written["mix_index"].to_pylist(), strict=True))
    unique = set(keys)
    return BatchSummary(
        output=output, input_rows=len(set(plan["row_id"].to_pylist())), mixes_per_row=mixes_per_row,
        expected_rows=plan.num_rows, written_rows=written.num_rows, missing=len(expected - unique),
        duplicates=len(keys) - len(unique), unexpected=len(unique - expected),
        prompt_tokens=int(pc.sum(written["prompt_tokens"]).as_py() or 0),
        completion_tokens=int(pc.sum(written["completion_tokens"]).as_py() or 0),
        seconds=time.perf_counter() - start,
    )

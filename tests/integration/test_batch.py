"""The Ray Data batch pipeline on a real local Ray cluster: a tiny anchor set, prompts x mixes, local files and S3
(moto's server on 127.0.0.1)."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PROMPTS = ["Once upon a time", "The weather today", "Dear customer,", "In conclusion", "A recipe for soup"]
GRID = [
    {"alpha": {"sentiment": 0.0}},
    {"alpha": {"sentiment": 1.0, "formality": 0.3}, "lambda": {"sentiment": 0.5, "formality": 0.5}},
    {"anchors": {"formality.formal": 1.0}},
]
# What lerpray.mixing.resolve_mix gives for GRID in the order of lerpray.testing.TINY_ANCHORS
# (sentiment.positive, sentiment.negative, formality.formal, formality.informal), worked out by hand.
GRID_COEFFS = [[0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.15, 0.35], [0.0, 0.0, 1.0, 0.0]]
BATCH_SIZE = 4
SAMPLING = {"temperature": 0.8, "top_k": 20, "max_tokens": 6, "seed": 7}


class CrashOnce:
    """The real engine, except that the job's first generate() call kills its actor's process (a marker file makes
    it once per job, across actor restarts)."""

    def __init__(self, marker: str, **engine_kwargs) -> None:
        from lerpray.batch.pipeline import load_engine

        self.engine, self.marker = load_engine(**engine_kwargs), Path(marker)

    def generate(self, requests):
        if not self.marker.exists():
            self.marker.write_text("crashed")
            os._exit(1)
        return self.engine.generate(requests)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> str:
    """A published tiny anchor set on disk whose manifest names a saved tiny base-model folder."""
    from lerpray.testing import tiny_anchor_set

    return str(tiny_anchor_set(tmp_path_factory.mktemp("batch-set")))


@pytest.fixture(scope="module")
def cluster(tiny_set, s3_server):
    """The tiny set, on a 2-CPU local Ray cluster whose workers see the AWS env of the moto server."""
    import ray
    import ray.cloudpickle

    anchors = tiny_set
    with pytest.MonkeyPatch.context() as env:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(var, raising=False)
        for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": s3_server, "RAY_AUTH_MODE": "disabled",
                           "RAY_USAGE_STATS_ENABLED": "0"}.items():
            env.setenv(var, value)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # CrashOnce travels to the actors
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield anchors
        finally:
            ray.shutdown()
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def job(anchors, inputs, output, **overrides):
    from lerpray.batch.config import parse_batch_config

    config = {
        "anchors": str(anchors),
        "input": {"paths": inputs},
        "sampling": SAMPLING,
        "resources": {"num_actors": 2, "batch_size": BATCH_SIZE, "num_cpus_per_actor": 0.5},
        "output": output if isinstance(output, dict) else {"path": output},
        "progress": False,
        **overrides,
    }
    return parse_batch_config(config)


def read_rows(table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: (r["row_id"], r["mix_index"]))


def in_process(anchors, rows: list[dict]) -> list[tuple]:
    """The same requests through an in-process engine, in the pipeline's batches (same float rounding)."""
    import torch

    from lerpray.batch.pipeline import load_engine
    from lerpray.model.requests import GenerationRequest
    from lerpray.model.sampling import SamplingParams

    engine = load_engine(str(anchors), None, device="cpu", dtype="float32", max_batch_size=BATCH_SIZE)
    params = {k: v for k, v in SAMPLING.items() if k != "seed"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a 0.5-CPU actor (OMP_NUM_THREADS=1): same reduction order
    try:
        results = []
        for i in range(0, len(rows), BATCH_SIZE):
            requests = [GenerationRequest(coeffs=tuple(r["coefficients"]), prompt=r["prompt"],
                                          sampling=SamplingParams(**params, seed=r["seed"]), request_id=str(j))
                        for j, r in enumerate(rows[i:i + BATCH_SIZE])]
            results += engine.generate(requests)
    finally:
        torch.set_num_threads(threads)
    return [(r.text, r.prompt_tokens, r.completion_tokens, r.finish_reason) for r in results]


def upload_anchor_set(s3_client, bucket: str, folder: str, prefix: str) -> str:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == "lerpray-manifest.json"):  # manifest last
        s3_client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def read_s3_jsonl(s3_client, bucket: str, prefix: str) -> list[dict]:
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    return [json.loads(line) for key in keys
            for line in s3_client.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()]


def test_same_requests_give_the_same_rows_locally_with_a_crash_and_on_s3(cluster, tmp_path, s3_client, s3_bucket,
                                                                        s3_env):
    """Run 1: local JSONL prompts x GRID -> local Parquet, 2 actors, the first actor call kills its actor.
    Run 2: the same 15 requests written out as per-row mixes and seeds in a Parquet file on S3, anchors on S3 ->
    JSONL on S3, 1 actor. Both complete, row for row identical, and equal to the in-process engine."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lerpray.batch.pipeline import run_batch
    from lerpray.batch.plan import row_seed

    prompts = tmp_path / "prompts.jsonl"
    lines = [{"prompt": p} for p in PROMPTS]
    lines[3]["seed"] = 12345  # a row may fix its own seed
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    crash = functools.partial(CrashOnce, str(tmp_path / "crashed"))
    first = run_batch(job(cluster, str(prompts), str(tmp_path / "out"), mixes=GRID), engine_factory=crash)

    assert (tmp_path / "crashed").exists(), "the injected crash did not happen"
    assert first.complete and (first.input_rows, first.mixes_per_row, first.written_rows) == (5, 3, 15), first
    rows1 = read_rows(pq.read_table(tmp_path / "out"))
    assert [(r["row_id"], r["mix_index"]) for r in rows1] == [(i, m) for i in range(5) for m in range(3)]
    for r in rows1:
        assert r["prompt"] == PROMPTS[r["row_id"]] and json.loads(r["mix"]) == GRID[r["mix_index"]]
        assert r["coefficients"] == pytest.approx(GRID_COEFFS[r["mix_index"]])
        assert r["seed"] == (12345 if r["row_id"] == 3 else row_seed(SAMPLING["seed"], r["row_id"]))
        assert r["completion_tokens"] >= 1 and r["finish_reason"] in ("stop", "length")
    assert len({r["text"] for r in rows1}) > 1  # not a constant

    anchors = upload_anchor_set(s3_client, s3_bucket, cluster, "anchors")
    table = pa.table({"prompt": [r["prompt"] for r in rows1], "seed": [r["seed"] for r in rows1],
                      "interpolation": [r["mix"] for r in rows1]})  # mixes as JSON strings
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    s3_client.put_object(Bucket=s3_bucket, Key="in/prompts.parquet", Body=sink.getvalue().to_pybytes())
    second = run_batch(job(anchors, f"s3://{s3_bucket}/in/prompts.parquet",
                           {"path": f"s3://{s3_bucket}/out", "format": "jsonl"},
                           resources={"num_actors": 1, "batch_size": BATCH_SIZE, "num_cpus_per_actor": 1},
                           s3={"endpoint_url": s3_env, "region": "us-east-1"}))

    assert second.complete and (second.input_rows, second.mixes_per_row, second.written_rows) == (15, 1, 15), second
    rows2 = sorted(read_s3_jsonl(s3_client, s3_bucket, "out/"), key=lambda r: r["row_id"])
    assert [r["row_id"] for r in rows2] == list(range(15)) and {r["mix_index"] for r in rows2} == {0}
    fields = ("prompt", "mix", "coefficients", "seed", "text", "prompt_tokens", "completion_tokens", "finish_reason")
    assert [[r[f] for f in fields] for r in rows2] == [[r[f] for f in fields] for r in rows1]
    expected = in_process(cluster, rows1)
    assert [(r["text"], r["prompt_tokens"], r["completion_tokens"], r["finish_reason"]) for r in rows1] == expected


def test_a_bad_mix_stops_the_job_before_it_starts_naming_row_and_field(cluster, tmp_path, capsys):
    import yaml

    from lerpray.cli import main

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": p, "interpolation": {"alpha": {"sentiment": 0.5}}} for p in PROMPTS]
    rows[2]["interpolation"] = {"alpha": {"sentiment": 1.5}}
    prompts.write_text("\n".join(json.dumps(r) for r in rows))
    config = tmp_path / "batch.yaml"
    config.write_text(yaml.safe_dump(job(cluster, str(prompts), str(tmp_path / "out")).model_dump(mode="json")))

    assert main(["batch", str(config), "--no-progress"]) == 2  # through the CLI, on the running cluster
    assert "input row 2: interpolation.alpha.sentiment: must be in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_prompt_the_engine_refuses_is_named_by_its_row(tiny_set):
    """The actor UDF in-process (no Ray): a prompt too long for the context fails its batch, naming the row. Through
    Ray Data the same BatchInputError reaches the driver (run_batch re-raises it from Ray's wrapper)."""
    import pyarrow as pa

    from lerpray.batch.pipeline import GenerateBatch, load_engine
    from lerpray.batch.plan import PLAN_SCHEMA, BatchInputError

    udf = GenerateBatch(load_engine, {"anchors": tiny_set, "base_model": None, "device": "cpu", "dtype": "float32",
                                      "max_batch_size": 4}, {"temperature": 0.0, "max_tokens": 4}, chat=False)
    mix = {"mix": "{}", "coefficients": [0.25] * 4, "resolved_mix": '{"coefficients": [0.25, 0.25, 0.25, 0.25]}'}
    rows = [{"row_id": 7 + i, "mix_index": 0, "prompt": p, **mix, "seed": 1}
            for i, p in enumerate(["short", "x" * 600, "fine"])]
    with pytest.raises(BatchInputError, match=r"input row 8: the prompt has 600 tokens but at most 508 fit"):
        udf(pa.Table.from_pylist(rows, schema=PLAN_SCHEMA))
    out = udf(pa.Table.from_pylist([rows[0], rows[2]], schema=PLAN_SCHEMA)).to_pylist()
    assert [r["row_id"] for r in out] == [7, 9] and all(r["completion_tokens"] >= 1 for r in out)

"""Batch rows with closed-loop feedback, through the actor UDF in-process (no Ray): the plan carries the loop in
its `resolved_mix` (lerpray.feedback.Feedback.report), each row is steered on its own text, and the output row's
`resolved_mix` reports the mixes it used, which replay its text in a plain engine."""

from __future__ import annotations

import json

import pytest

from lerpray.mixing import ExtrapolationBounds, resolve_mix
from lerpray.targets import Calibration, Curve

pytestmark = pytest.mark.component

S = "sentiment"
CAL = Calibration({S: Curve("vader", (0.0, 1.0), (-0.5, 0.5))})


@pytest.fixture(scope="module")
def udf(tmp_path_factory):
    from lerpray.batch.pipeline import GenerateBatch, load_engine
    from lerpray.testing import tiny_anchor_set

    anchors = str(tiny_anchor_set(tmp_path_factory.mktemp("batch-feedback")))
    kwargs = {"anchors": anchors, "base_model": None, "device": "cpu", "dtype": "float32", "max_batch_size": 4}
    return GenerateBatch(load_engine, kwargs, {"temperature": 0.0, "max_tokens": 8}, chat=False)


def test_batch_rows_with_feedback_are_steered_and_report_their_mixes(udf):
    import pyarrow as pa

    from lerpray.batch.plan import PLAN_SCHEMA, plan_rows
    from lerpray.model import GenerationRequest, ResolvedMix, SamplingParams
    from lerpray.steering import MixContext

    layout = udf.engine.layout
    rows = [{"prompt": "Hello", "interpolation": {"target": {S: 0.3}, "feedback": {"every": 2, "gain": 1.0}}},
            {"prompt": "Bye", "interpolation": {"alpha": {S: 0.2}}}]  # fmt: skip
    plan = plan_rows(rows, MixContext(layout, ExtrapolationBounds(), CAL), max_tokens=8)
    assert json.loads(plan[0]["resolved_mix"])["feedback"]["every"] == 2
    out = udf(pa.Table.from_pylist(plan, schema=PLAN_SCHEMA)).to_pylist()
    steered = json.loads(out[0]["resolved_mix"])
    steps = steered["feedback"]["trajectory"]
    assert [s["token"] for s in steps] == [0, 2, 4, 6] and steps[0]["alpha"] == {S: pytest.approx(0.8)}
    assert any(s["alpha"][S] != pytest.approx(0.8) for s in steps[1:])  # the loop moved the mix
    assert set(steered["feedback"]["final_score"]) == {S}
    assert out[1]["resolved_mix"] == plan[1]["resolved_mix"]  # an open-loop row is untouched
    mixes = [resolve_mix({"alpha": s["alpha"]}, layout) for s in steps]
    pieces = [(nxt["token"], m) for m, nxt in zip(mixes[:-1], steps[1:], strict=True)] + [(None, mixes[-1])]
    replay = GenerationRequest(mix=ResolvedMix(pieces=tuple(pieces)), prompt="Hello",
                               sampling=SamplingParams(temperature=0, max_tokens=8, seed=plan[0]["seed"]))  # fmt: skip
    assert udf.engine.generate([replay])[0].text == out[0]["text"]


def test_target_rows_run_as_long_as_their_calibration_unless_the_config_says(udf):
    from lerpray.batch.pipeline import GenerateBatch
    from lerpray.batch.plan import plan_rows
    from lerpray.steering import MixContext

    calibrated = Calibration(CAL.curves, sampling={"max_tokens": 48, "min_tokens": 6})
    rows = [{"prompt": "Hello", "interpolation": {"target": {S: 0.3}}},
            {"prompt": "Bye", "interpolation": {"alpha": {S: 0.2}}}]  # fmt: skip
    plan = plan_rows(rows, MixContext(udf.engine.layout, ExtrapolationBounds(), calibrated), max_tokens=8)
    assert [udf._request(row).sampling.min_tokens for row in plan] == [6, 0]
    told = GenerateBatch.__new__(GenerateBatch)  # the config set min_tokens: every row keeps it
    told.engine, told.sampling, told.chat = udf.engine, {**udf.sampling, "min_tokens": 0}, False
    assert [told._request(row).sampling.min_tokens for row in plan] == [0, 0]

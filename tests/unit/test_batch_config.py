"""The batch job config (pydantic at the edge) and the driver-side plan: prompts x mixes -> rows, seeds, errors that
name the row and the field. Pure: no Ray, no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lerpray.batch.config import BatchConfigError, load_batch_config, parse_batch_config
from lerpray.batch.plan import BatchInputError, plan_rows, row_seed
from lerpray.mixing import AnchorLayout
from lerpray.steering import MixContext

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
LAYOUT = AnchorLayout(
    anchors=("sentiment.positive", "sentiment.negative", "formality.formal", "formality.informal"),
    attributes={"sentiment": ("sentiment.negative", "sentiment.positive"),
                "formality": ("formality.informal", "formality.formal")},
)
MIXES = MixContext(LAYOUT)
MINIMAL = {"anchors": "s3://bucket/sets/tiny", "input": {"paths": "data/prompts.jsonl"}, "output": {"path": "out"}}


def test_a_minimal_config_takes_the_documented_defaults():
    config = parse_batch_config(MINIMAL)
    assert config.input.paths == ["data/prompts.jsonl"] and config.input.resolved_format() == "jsonl"
    assert (config.resources.num_actors, config.resources.batch_size, config.resources.num_gpus_per_actor) == (1, 16, 0)
    assert (config.output.format, config.output.overwrite, config.mixes) == ("parquet", False, None)
    assert config.extrapolation is not None and config.extrapolation.alpha_max == 2.0


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("batch_*.yaml")), ids=lambda p: p.name)
def test_the_example_configs_validate(path):
    config = load_batch_config(path)
    assert config.output.path and config.input.paths


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"output": {"path": "out", "fromat": "jsonl"}}, r"output\.fromat: unknown field"),
        ({"anchors": "gs://bucket/set"}, r"anchors: .*only s3:// URIs and local paths"),
        ({"input": {"paths": ["s3://B/x.jsonl"]}}, r"input\.paths: .*not an S3 URI"),
        ({"input": {"paths": "data/prompts.txt"}}, r"set input\.format to jsonl or parquet"),
        ({"resources": {"num_actors": 0}}, r"resources\.num_actors: .*greater than or equal to 1"),
        ({"sampling": {"top_p": 0}}, r"sampling\.top_p: .*greater than 0"),
        ({"mixes": []}, r"mixes: .*at least 1 item"),
        ({"extrapolation": {"alpha_min": 0.5}}, r"extrapolation: .*contain \[0, 1\]"),
    ],
)
def test_config_problems_name_their_field(change, message):
    with pytest.raises(BatchConfigError, match=message):
        parse_batch_config({**MINIMAL, **change})


def test_a_missing_or_broken_file_says_so(tmp_path):
    with pytest.raises(BatchConfigError, match="cannot read batch config"):
        load_batch_config(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("anchors: [unclosed\n")
    with pytest.raises(BatchConfigError, match="not valid YAML"):
        load_batch_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(BatchConfigError, match="top level must be a mapping"):
        load_batch_config(tmp_path / "list.yaml")


def test_row_seed_is_stable_across_processes_and_differs_by_row_and_base():
    # Pinned values (computed once with this code: blake2b of "base:row", 8 bytes, top bit cleared). A change here
    # changes every batch output ever produced for a seed; Python's hash() would change per process.
    assert row_seed(0, 0) == 6155466857423425634
    assert row_seed(7, 3) == 3073397281926060688
    assert len({row_seed(0, i) for i in range(1000)}) == 1000
    assert row_seed(1, 5) != row_seed(0, 5)
    assert all(0 <= row_seed(7, i) < 2**63 for i in range(100))


def test_a_grid_is_crossed_with_every_prompt_in_row_then_mix_order_sharing_the_rows_seed():
    grid = [{"alpha": {"sentiment": 0.0}}, {"anchors": {"formality.formal": 1}}]
    rows = [{"prompt": "a"}, {"prompt": "b", "seed": 99.0}, {"prompt": "c", "seed": None}]  # Arrow: ints may be floats
    plan = plan_rows(rows, MIXES, grid=grid, base_seed=3)
    assert [(p["row_id"], p["mix_index"], p["prompt"]) for p in plan] == [
        (0, 0, "a"), (0, 1, "a"), (1, 0, "b"), (1, 1, "b"), (2, 0, "c"), (2, 1, "c")]
    assert [p["seed"] for p in plan] == [row_seed(3, 0)] * 2 + [99] * 2 + [row_seed(3, 2)] * 2
    assert plan[0]["coefficients"] == [0.0, 1.0, 0.0, 0.0] and plan[1]["coefficients"] == [0.0, 0.0, 1.0, 0.0]
    assert json.loads(plan[1]["mix"]) == grid[1]


def test_per_row_mixes_accept_arrow_structs_with_null_keys_and_json_strings():
    rows = [
        # What Arrow makes of {"alpha": {"sentiment": 0.8}} next to a row with "anchors": every key, nulls filled.
        {"prompt": "a", "interpolation": {"alpha": {"sentiment": 0.8, "formality": None}, "anchors": None}},
        {"prompt": "b", "interpolation": json.dumps({"anchors": {"sentiment.negative": 1.0}})},
    ]
    plan = plan_rows(rows, MIXES)
    assert plan[0]["coefficients"] == pytest.approx([0.8, 0.2, 0.0, 0.0])
    assert plan[1]["coefficients"] == [0.0, 1.0, 0.0, 0.0]
    assert json.loads(plan[0]["mix"]) == {"alpha": {"sentiment": 0.8}}
    assert [p["mix_index"] for p in plan] == [0, 0]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "x", "interpolation": {"alpha": {"sentiment": 1.5}}},
         r"input row 1: interpolation\.alpha\.sentiment: must be in \[0, 1\]"),
        ({"prompt": "x", "interpolation": {"alpha": {"humour": 0.5}}}, r"input row 1: interpolation\.alpha\.humour: unknown"),
        ({"prompt": "x", "interpolation": "{not json"}, r"input row 1: interpolation: not valid JSON"),
        ({"prompt": "x"}, r"input row 1: interpolation: missing; give every row a mix, or set `mixes`"),
        ({"interpolation": {"alpha": {"sentiment": 0.5}}}, r"input row 1: prompt: missing"),
        ({"prompt": "", "interpolation": {"alpha": {"sentiment": 0.5}}}, r"input row 1: prompt: missing"),
        ({"prompt": "x", "seed": -1, "interpolation": {"alpha": {"sentiment": 0.5}}}, r"input row 1: seed: .*>= 0"),
        ({"prompt": "x", "seed": 1.5, "interpolation": {"alpha": {"sentiment": 0.5}}}, r"input row 1: seed: .*whole"),
        ({"prompt": "x", "seed": True, "interpolation": {"alpha": {"sentiment": 0.5}}}, r"input row 1: seed"),
        ({"prompt": "x", "seed": float("nan"), "interpolation": {"alpha": {"sentiment": 0.5}}}, r"input row 1: seed"),
        ({"prompt": "x", "seed": "5", "interpolation": {"alpha": {"sentiment": 0.5}}}, r"input row 1: seed"),
        ({"prompt": "x", "seed": 2**63, "interpolation": {"alpha": {"sentiment": 0.5}}}, r"input row 1: seed"),
    ],
)
def test_a_bad_row_is_named_with_its_field(row, message):
    good = {"prompt": "fine", "interpolation": {"alpha": {"sentiment": 0.5}}}
    with pytest.raises(BatchInputError, match=message):
        plan_rows([good, row, good], MIXES)


def test_extrapolation_follows_the_configured_bounds():
    row = {"prompt": "x", "interpolation": {"alpha": {"sentiment": 1.5}, "extrapolate": True}}
    assert plan_rows([row], MIXES)[0]["coefficients"] == pytest.approx([1.5, -0.5, 0.0, 0.0])
    with pytest.raises(BatchInputError, match=r"interpolation\.extrapolate: .*does not allow"):
        plan_rows([row], MixContext(LAYOUT, None))


def test_the_input_column_name_is_used_in_messages_and_many_problems_are_listed_but_capped():
    rows = [{"text": f"p{i}", "mix": {"alpha": {"sentiment": 2.0}}} for i in range(30)]
    with pytest.raises(BatchInputError) as info:
        plan_rows(rows, MIXES, prompt_field="text", mix_field="mix")
    message = str(info.value)
    assert "input row 0: mix.alpha.sentiment: must be in [0, 1]" in message
    assert "input row 9:" in message and "input row 10:" not in message and "stopped at the first problems" in message


def test_a_grid_and_per_row_mixes_together_are_refused_and_a_bad_grid_names_its_index():
    grid = [{"alpha": {"sentiment": 0.5}}]
    with pytest.raises(BatchInputError, match=r"input row 0: interpolation: the row has its own mix but the config"):
        plan_rows([{"prompt": "a", "interpolation": {"alpha": {"sentiment": 1}}}], MIXES, grid=grid)
    with pytest.raises(BatchInputError, match=r"mixes\.1: interpolation\.anchors\.nope: unknown anchor"):
        plan_rows([{"prompt": "a"}], MIXES, grid=[*grid, {"anchors": {"nope": 1}}])


def test_an_empty_input_is_refused():
    with pytest.raises(BatchInputError, match="no rows"):
        plan_rows([], MIXES, grid=[{"alpha": {"sentiment": 0.5}}])


def test_schedules_and_targets_plan_like_the_servers_interpolation():
    from lerpray.batch.pipeline import GenerateBatch
    from lerpray.targets import Calibration, Curve

    calibration = Calibration({"sentiment": Curve("vader", (0.0, 1.0), (-0.5, 0.5))})  # score = alpha - 0.5
    schedule = {"schedule": [{"until": 3, "mix": {"alpha": {"sentiment": 1.0}}}, {"mix": {"alpha": {"sentiment": 0.0}}}]}
    rows = [{"prompt": "a", "interpolation": schedule},
            {"prompt": "b", "interpolation": {"target": {"sentiment": 0.25}}},
            {"prompt": "c", "interpolation": {"alpha": {"sentiment": 0.5}}}]
    plan = plan_rows(rows, MixContext(LAYOUT, calibration=calibration), max_tokens=8)

    assert plan[0]["coefficients"] == [1.0, 0.0, 0.0, 0.0]  # token 0's mix
    pieces = ((3, (1.0, 0.0, 0.0, 0.0)), (None, (0.0, 1.0, 0.0, 0.0)))
    assert [(p.get("until"), tuple(p["mix"]["coefficients"])) for p in json.loads(plan[0]["resolved_mix"])["schedule"]
            ] == list(pieces)  # every token's mix, in the one JSON form replies use too
    assert plan[1]["coefficients"] == pytest.approx([0.75, 0.25, 0.0, 0.0])  # target 0.25 -> alpha 0.75
    assert json.loads(plan[1]["resolved_mix"])["alpha"] == {"sentiment": pytest.approx(0.75)}

    udf = GenerateBatch(lambda: None, {}, {"temperature": 0.0, "max_tokens": 8}, chat=False)
    assert udf._request(plan[0]).mix.pieces == pieces  # what the engine runs
    assert not udf._request(plan[2]).mix.scheduled
    with pytest.raises(BatchInputError, match=r"input row 0: interpolation\.schedule\[0\]\.until: 3 is beyond max_tokens 2"):
        plan_rows(rows[:1], MIXES, max_tokens=2)
    with pytest.raises(BatchInputError, match=r"input row 0: interpolation\.target: .*no calibration"):
        plan_rows(rows[1:2], MIXES)

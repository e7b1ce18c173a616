"""The training job config: defaults, per-anchor overrides, and errors that list every problem with its path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lerpray.train.config import ConfigError, load_train_config, parse_train_config

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def minimal(**overrides) -> dict:
    config = {
        "attributes": {"sentiment": {"high": "positive", "low": "negative"}},
        "anchors": [
            {"attribute": "sentiment", "pole": "positive", "data": {"paths": ["pos.jsonl"]}},
            {"attribute": "sentiment", "pole": "negative", "data": {"paths": "neg.txt"}},
        ],
        "output": "s3://bucket/sets/sentiment",
    }
    config.update(overrides)
    return config


def test_defaults_are_the_papers_lora_settings():
    config = parse_train_config(minimal())
    lora = config.anchors[0].lora
    assert (lora.r, lora.lora_alpha, lora.dropout) == (32, 16.0, 0.1)
    assert lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert config.anchors[0].training.block_size == 128
    assert config.deepspeed is None and config.resources.workers_per_anchor == 1
    assert config.anchors[1].data.paths == ["neg.txt"]  # one path is a list of one
    assert config.anchor_names == ["sentiment.positive", "sentiment.negative"]


def test_anchor_overrides_merge_over_top_level_sections():
    raw = minimal(lora={"r": 16, "dropout": 0.0}, training={"max_steps": 50, "learning_rate": 1e-3})
    raw["anchors"][1]["lora"] = {"r": 4}
    raw["anchors"][1]["training"] = {"seed": 7}
    config = parse_train_config(raw)
    first, second = config.anchors
    assert (first.lora.r, first.lora.dropout, first.training.seed) == (16, 0.0, 0)
    assert (second.lora.r, second.lora.dropout) == (4, 0.0)  # r overridden, dropout inherited
    assert (second.training.max_steps, second.training.learning_rate, second.training.seed) == (50, 1e-3, 7)


@pytest.mark.parametrize("value", [False, "off", None])
def test_deepspeed_off_spellings(value):
    assert parse_train_config(minimal(deepspeed=value)).deepspeed is None


def test_deepspeed_stage_and_offload():
    config = parse_train_config(minimal(deepspeed={"stage": 3, "offload_optimizer": True}))
    assert (config.deepspeed.stage, config.deepspeed.offload_optimizer) == (3, True)


def test_every_problem_is_listed_with_its_field_path():
    raw = minimal(
        lora={"r": 0},
        training={"block_size": 1, "lr_schedule": "exponential"},
        resources={"workers_per_anchor": 0, "cpu_per_worker": 2},
        deepspeed={"stage": 1},
        output="gs://bucket/x",
    )
    raw["anchors"][0]["data"] = {}
    with pytest.raises(ConfigError) as info:
        parse_train_config(raw, source="job.yaml")
    message = str(info.value)
    expected = [
        "lora.r:",
        "training.block_size:",
        "training.lr_schedule:",
        "resources.workers_per_anchor:",
        "resources.cpu_per_worker: unknown field",
        "deepspeed.stage:",
        "output:",
        "anchors.0.data.paths: Field required",
    ]
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"
    assert message.startswith("job.yaml has 8 problem(s)")
    # A bad top-level field is reported once, not again for every anchor that inherits it.
    assert "anchors.0.lora.r" not in message and "anchors.1.training.block_size" not in message


def test_pole_problems_are_listed_together():
    raw = minimal(attributes={"sentiment": {"high": "positive", "low": "negative"},
                              "formality": {"high": "formal", "low": "formal"}})
    raw["anchors"][1]["pole"] = "neutral"
    raw["anchors"].append({"attribute": "humor", "pole": "funny", "data": {"paths": ["f.txt"]}})
    with pytest.raises(ConfigError) as info:
        parse_train_config(raw)
    message = str(info.value)
    for fragment in [
        "anchors.1.pole: 'neutral' is neither 'positive' (high) nor 'negative' (low)",
        "anchors.2.attribute: 'humor' is not declared",
        "attributes.sentiment: no anchor trains pole 'negative'",
        "attributes.formality: high and low poles must differ",
    ]:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"


def test_duplicate_anchor_is_named_with_both_positions():
    raw = minimal()
    raw["anchors"].append(dict(raw["anchors"][0]))
    with pytest.raises(ConfigError, match=r"anchors\.2: anchor 'sentiment\.positive' is listed twice \(also anchors\.0\)"):
        parse_train_config(raw)


def test_names_must_be_safe_for_uris_and_run_names():
    raw = minimal(run_id="my run")
    raw["anchors"][0]["attribute"] = "senti.ment"
    with pytest.raises(ConfigError) as info:
        parse_train_config(raw)
    assert "run_id: String should match pattern" in str(info.value)
    assert "anchors.0.attribute: String should match pattern" in str(info.value)


def test_load_reads_yaml_and_reports_unreadable_files(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(minimal(run_id="exp-1")))
    assert load_train_config(path).run_id == "exp-1"
    with pytest.raises(ConfigError, match="cannot read training config"):
        load_train_config(tmp_path / "missing.yaml")
    path.write_text("anchors: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(path)
    path.write_text("- a list")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_train_config(path)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)  # the CLI prints ValueErrors as user errors (exit 2)


@pytest.mark.parametrize("name", ["train_local.yaml", "train_gpu_s3.yaml"])
def test_shipped_example_configs_validate(name):
    config = load_train_config(REPO / "jobs" / "configs" / name)
    assert len(config.anchors) >= 2

"""What `lerpray submit` sends to the Ray Jobs API (lerpray/submit/spec.py) and the CLI's one-line errors; no cluster."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from lerpray.submit.spec import (
    CONFIG_DIR,
    PACKAGE_DIR,
    SubmitError,
    build_job,
    exit_code,
    merge_runtime_env,
    normalize_address,
    parse_runtime_env_json,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path) -> Path:
    """A fake checkout: jobs/ with two entrypoints and a helper module, and a config."""
    jobs = tmp_path / "proj" / "jobs"
    jobs.mkdir(parents=True)
    for name in ("train_anchors.py", "batch_generate.py", "helpers.py"):
        (jobs / name).write_text(f"# {name}\n")
    (jobs / "configs").mkdir()
    (jobs / "configs" / "train.yaml").write_text("run_id: x\noutput: s3://bucket/out\n")
    return tmp_path / "proj"


def staging(tmp_path: Path) -> Path:
    folder = tmp_path / "staging"
    folder.mkdir()
    return folder


def test_default_job_stages_the_entrypoints_and_the_config(project, tmp_path):
    spec = build_job("train", project / "jobs/configs/train.yaml", staging_dir=staging(tmp_path),
                     jobs_dir=project / "jobs", job_args=("--overwrite", "--run-id", "a b"), validate=False)
    root = Path(spec.runtime_env["working_dir"])
    assert shlex.split(spec.entrypoint) == ["python", "jobs/train_anchors.py", f"{CONFIG_DIR}/train.yaml",
                                            "--overwrite", "--run-id", "a b"]
    assert (root / "jobs/train_anchors.py").is_file() and (root / "jobs/helpers.py").is_file()
    assert (root / CONFIG_DIR / "train.yaml").read_text() == (project / "jobs/configs/train.yaml").read_text()
    assert spec.runtime_env["py_modules"] == [str(PACKAGE_DIR)]
    assert spec.runtime_env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    assert spec.metadata == {"lerpray_kind": "train", "lerpray_config": "train.yaml"}


def test_working_dir_mode_uploads_the_folder_and_points_inside_it(project, tmp_path):
    spec = build_job("train", project / "jobs/configs/train.yaml", staging_dir=staging(tmp_path),
                     working_dir=project, ship_package=False, validate=False)
    assert spec.runtime_env["working_dir"] == str(project.resolve())
    assert spec.entrypoint == "python jobs/train_anchors.py jobs/configs/train.yaml"
    assert "py_modules" not in spec.runtime_env
    assert not any((tmp_path / "staging").iterdir()), "nothing staged when the user's folder is uploaded"


def test_working_dir_mode_refuses_a_config_outside_it_or_a_folder_without_the_job(project, tmp_path):
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("a: 1\n")
    with pytest.raises(SubmitError, match="outside --working-dir"):
        build_job("train", outside, staging_dir=staging(tmp_path), working_dir=project, validate=False)
    with pytest.raises(SubmitError, match="has no jobs/eval_sweep.py"):
        build_job("eval", project / "jobs/configs/train.yaml", staging_dir=tmp_path, working_dir=project,
                  validate=False)


@pytest.mark.parametrize(("text", "message"), [
    (None, "does not exist"), ("- a\n- b\n", "must be a mapping"), ("a: [1,\n", "not valid YAML")])
def test_bad_configs_fail_before_anything_is_uploaded(project, tmp_path, text, message):
    config = tmp_path / "c.yaml"
    if text is not None:
        config.write_text(text)
    with pytest.raises(SubmitError, match=message):
        build_job("train", config, staging_dir=staging(tmp_path), jobs_dir=project / "jobs")


def test_the_job_config_is_validated_with_the_jobs_own_model_before_upload(project, tmp_path):
    from lerpray.train.config import ConfigError

    with pytest.raises(ConfigError, match="attributes"):  # the fake config lacks the required fields
        build_job("train", project / "jobs/configs/train.yaml", staging_dir=staging(tmp_path),
                  jobs_dir=project / "jobs")
    assert not any((tmp_path / "staging").iterdir())


def test_unknown_kind_and_missing_entrypoint_are_named(project, tmp_path):
    config = project / "jobs/configs/train.yaml"
    with pytest.raises(SubmitError, match="unknown job kind 'serve'"):
        build_job("serve", config, staging_dir=staging(tmp_path), jobs_dir=project / "jobs")
    with pytest.raises(SubmitError, match="eval_sweep.py does not exist"):
        build_job("eval", config, staging_dir=tmp_path / "staging", jobs_dir=project / "jobs", validate=False)


def test_user_runtime_env_merges_into_ours():
    base = {"working_dir": "/w", "py_modules": ["/pkg"], "env_vars": {"A": "1", "B": "2"}, "excludes": ["*.pyc"]}
    merged = merge_runtime_env(base, {"env_vars": {"B": "3", "N": 4}, "py_modules": ["/other"], "pip": ["x"]})
    assert merged == {"working_dir": "/w", "py_modules": ["/pkg", "/other"], "excludes": ["*.pyc"],
                      "env_vars": {"A": "1", "B": "3", "N": "4"}, "pip": ["x"]}
    assert base["env_vars"] == {"A": "1", "B": "2"}, "the base is not modified"
    with pytest.raises(SubmitError, match="--working-dir"):
        merge_runtime_env(base, {"working_dir": "/x"})
    with pytest.raises(SubmitError, match="env_vars must be a mapping"):
        merge_runtime_env(base, {"env_vars": ["A=1"]})


def test_runtime_env_json_must_be_an_object():
    assert parse_runtime_env_json(None) == {}
    assert parse_runtime_env_json('{"pip": ["x"]}') == {"pip": ["x"]}
    with pytest.raises(SubmitError, match="not valid JSON"):
        parse_runtime_env_json("{pip: x}")
    with pytest.raises(SubmitError, match="JSON object"):
        parse_runtime_env_json("[1]")


def test_addresses_are_the_dashboard_url():
    assert normalize_address("127.0.0.1:8265") == "http://127.0.0.1:8265"
    assert normalize_address("https://head:8265/") == "https://head:8265"
    for bad in ("ray://head:10001", "s3://bucket"):
        with pytest.raises(SubmitError, match="dashboard"):
            normalize_address(bad)
    with pytest.raises(SubmitError, match="--address"):
        normalize_address(None)


def test_exit_codes_follow_the_job_status():
    assert [exit_code(s) for s in ("SUCCEEDED", "FAILED", "STOPPED")] == [0, 1, 1]


def test_cli_reports_an_unreachable_head_in_one_line(project, capsys):
    from lerpray.cli import main

    assert main(["jobs", "status", "raysubmit_x", "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot reach the Ray Jobs API at http://127.0.0.1:9" in err


def test_arguments_after_double_dash_go_to_the_entrypoint_wherever_the_options_are():
    from lerpray.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["submit", "train", "c.yaml", "--address", "h:8265", "--", "--overwrite", "--follow"])
    assert (args.kind, str(args.config), args.address, args.follow) == ("train", "c.yaml", "h:8265", False)
    assert args.job_args == ["--overwrite", "--follow"]
    assert parser.parse_args(["submit", "--follow", "eval", "c.yaml"]).job_args == []

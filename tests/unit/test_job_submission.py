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
    """A user's folder: a config and a data file it names; no lerpray checkout, no jobs/ folder."""
    folder = tmp_path / "proj"
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "train.yaml").write_text("run_id: x\noutput: s3://bucket/out\n")
    (folder / "data.txt").write_text("some text\n")
    return folder


def staging(tmp_path: Path) -> Path:
    folder = tmp_path / "staging"
    folder.mkdir()
    return folder


def test_default_job_runs_the_package_and_uploads_only_the_config(project, tmp_path):
    spec = build_job("train", project / "configs/train.yaml", staging_dir=staging(tmp_path),
                     job_args=("--overwrite", "--run-id", "a b"), validate=False)
    root = Path(spec.runtime_env["working_dir"])
    assert shlex.split(spec.entrypoint) == ["python", "-m", "lerpray", "train", f"{CONFIG_DIR}/train.yaml",
                                            "--overwrite", "--run-id", "a b"]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [CONFIG_DIR, f"{CONFIG_DIR}/train.yaml"]
    assert (root / CONFIG_DIR / "train.yaml").read_text() == (project / "configs/train.yaml").read_text()
    assert spec.runtime_env["py_modules"] == [str(PACKAGE_DIR)]
    assert spec.runtime_env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    assert spec.metadata == {"lerpray_kind": "train", "lerpray_config": "train.yaml"}


@pytest.mark.parametrize(("kind", "command"), [("train", ["train"]), ("batch", ["batch"]), ("eval", ["eval", "sweep"])])
def test_each_kind_runs_its_lerpray_subcommand(project, tmp_path, kind, command):
    from lerpray.cli import build_parser

    spec = build_job(kind, project / "configs/train.yaml", staging_dir=staging(tmp_path), validate=False)
    argv = shlex.split(spec.entrypoint)
    assert argv[:3] == ["python", "-m", "lerpray"] and argv[3:-1] == command
    assert build_parser().parse_args(argv[3:]).config == f"{CONFIG_DIR}/train.yaml"  # a real subcommand


def test_working_dir_mode_uploads_the_folder_and_points_inside_it(project, tmp_path):
    spec = build_job("train", project / "configs/train.yaml", staging_dir=staging(tmp_path),
                     working_dir=project, ship_package=False, validate=False)
    assert spec.runtime_env["working_dir"] == str(project.resolve())
    assert spec.entrypoint == "python -m lerpray train configs/train.yaml"
    assert "py_modules" not in spec.runtime_env
    assert not any((tmp_path / "staging").iterdir()), "nothing staged when the user's folder is uploaded"


def test_working_dir_mode_refuses_a_config_outside_it_or_a_missing_folder(project, tmp_path):
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("a: 1\n")
    with pytest.raises(SubmitError, match="outside --working-dir"):
        build_job("train", outside, staging_dir=staging(tmp_path), working_dir=project, validate=False)
    with pytest.raises(SubmitError, match="is not a folder"):
        build_job("train", outside, staging_dir=tmp_path / "staging", working_dir=tmp_path / "nope", validate=False)


@pytest.mark.parametrize(("text", "message"), [
    (None, "does not exist"), ("- a\n- b\n", "must be a mapping"), ("a: [1,\n", "not valid YAML")])
def test_bad_configs_fail_before_anything_is_uploaded(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    if text is not None:
        config.write_text(text)
    with pytest.raises(SubmitError, match=message):
        build_job("train", config, staging_dir=staging(tmp_path))


def test_the_job_config_is_validated_with_the_jobs_own_model_before_upload(project, tmp_path):
    from lerpray.train.config import ConfigError

    with pytest.raises(ConfigError, match="attributes"):  # the fake config lacks the required fields
        build_job("train", project / "configs/train.yaml", staging_dir=staging(tmp_path))
    assert not any((tmp_path / "staging").iterdir())


def test_unknown_kind_is_named(project, tmp_path):
    with pytest.raises(SubmitError, match="unknown job kind 'serve'"):
        build_job("serve", project / "configs/train.yaml", staging_dir=staging(tmp_path))


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

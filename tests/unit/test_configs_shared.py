"""The pieces job configs share (lerpray/configs.py): one rule per idea, so train, batch and serve agree on paths, base
model overrides and error reports; and the S3 settings pyarrow and the anchor store both read (lerpray/anchors/s3.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from lerpray.anchors.s3 import arrow_filesystem, s3_settings
from lerpray.batch.config import parse_batch_config
from lerpray.configs import StrictModel, UriList, absolute_base_model, absolute_uri
from lerpray.train.config import parse_train_config

pytestmark = pytest.mark.unit


class Paths(StrictModel):
    paths: UriList


def test_a_uri_list_takes_one_path_bare_checks_each_and_needs_one():
    assert Paths(paths="data/a.jsonl").paths == ["data/a.jsonl"]
    assert Paths(paths=["a", "s3://bucket-1/x"]).paths == ["a", "s3://bucket-1/x"]
    with pytest.raises(ValidationError, match="only s3:// URIs and local paths"):
        Paths(paths=["gs://bucket/x"])
    with pytest.raises(ValidationError, match="at least 1 item"):
        Paths(paths=[])


def test_batch_and_train_share_the_path_rule():
    batch = {"anchors": "s3://bucket/set", "input": {"paths": "http://x/y"}, "output": {"path": "out"}}
    with pytest.raises(ValueError, match=r"input\.paths: .*only s3:// URIs"):
        parse_batch_config(batch)
    train = {"anchors": [{"attribute": "s", "pole": "p", "data": {"paths": "http://x/y"}}]}
    with pytest.raises(ValueError, match=r"anchors\.0\.data\.paths: .*only s3:// URIs"):
        parse_train_config(train)


def test_absolute_paths_for_workers_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    assert absolute_uri("out") == str(tmp_path / "out") and absolute_uri("s3://b/k") == "s3://b/k"
    assert absolute_base_model("model") == str(tmp_path / "model")
    assert absolute_base_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # a hub id stays
    assert absolute_base_model(None) is None
    assert Path(absolute_uri("~/x")).is_absolute()


def test_s3_settings_come_from_arguments_else_the_aws_environment(monkeypatch):
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    assert s3_settings() == (None, None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://user:secret@minio:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert s3_settings() == ("http://minio:9000", "eu-west-1")  # never the credentials
    assert s3_settings("https://r2.example", "auto") == ("https://r2.example", "auto")
    fs = arrow_filesystem()
    assert type(fs).__name__ == "S3FileSystem" and fs.region == "eu-west-1"

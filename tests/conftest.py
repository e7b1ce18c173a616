"""Shared fixtures: tiny models and anchor sets built in code, and a local S3 endpoint (moto).

Session-scoped objects are shared by every test: do not mutate them (copy a model before changing it).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

# exit_status: ends the process with the session's final status once pytest is done, skipping the interpreter's
# teardown, which can segfault after a green run. skip_policy: outside the gpu tier a skip is a failure.
pytest_plugins = ["exit_status", "skip_policy"]

# Anchors of the shared tiny set, in coefficient order: name -> random_adapter kwargs. Two attributes with
# different ranks, so stacking code sees unequal r_k.
TINY_ANCHORS: dict[str, dict] = {
    "sentiment.positive": {"r": 4, "lora_alpha": 8.0, "seed": 1},
    "sentiment.negative": {"r": 4, "lora_alpha": 8.0, "seed": 2},
    "formality.formal": {"r": 2, "lora_alpha": 4.0, "seed": 3},
    "formality.informal": {"r": 2, "lora_alpha": 4.0, "seed": 4},
}


@pytest.fixture(scope="session")
def tiny_llama_model():
    """A random tiny Llama (hidden 32, 2 layers, vocab 384) in eval mode. Shared: do not modify it."""
    from lerpray.testing import tiny_llama

    return tiny_llama(seed=0)


@pytest.fixture(scope="session")
def tiny_anchor_dirs(tiny_llama_model, tmp_path_factory) -> dict[str, Path]:
    """PEFT adapter folders of `tiny_llama_model` with random non-zero factors, see TINY_ANCHORS."""
    from lerpray.testing import random_adapter

    root = tmp_path_factory.mktemp("tiny-adapters")
    return {name: random_adapter(tiny_llama_model, root / name, **kw) for name, kw in TINY_ANCHORS.items()}


@pytest.fixture(scope="session")
def tiny_anchor_set(tiny_llama_model, tiny_anchor_dirs, tmp_path_factory) -> str:
    """A published local anchor set (folder path) of the four TINY_ANCHORS. Shared: do not modify it."""
    from lerpray.anchors import build_anchor_set
    from lerpray.model.base import model_identity

    dest = tmp_path_factory.mktemp("tiny-anchor-set") / "set"
    build_anchor_set(model_identity(tiny_llama_model, "tiny-llama"), tiny_anchor_dirs, str(dest))
    return str(dest)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (a free port) for the whole session; yields its endpoint URL.

    Use `s3_env` / `s3_bucket` in tests: they set the dummy credentials and give each test a fresh bucket.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path) -> str:
    """Point the standard AWS environment at the moto server with dummy credentials; yields the endpoint URL.

    Set before anything (boto3, pyarrow, Ray workers started afterwards) reads it; undone after the test.
    """
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
        # Keep the developer's own ~/.aws out of the tests.
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials-absent"),
    }
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    return s3_server


@pytest.fixture
def s3_client(s3_env):
    """A plain boto3 S3 client on the moto server (for setup and for poking at objects directly)."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")


@pytest.fixture
def s3_bucket(s3_client) -> str:
    """A fresh, empty bucket on the moto server for this test; yields its name (URIs: f"s3://{name}/prefix")."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name

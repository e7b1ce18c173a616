"""Anchor sets on a real S3 endpoint (moto's server on 127.0.0.1): round trip, errors, corruption, multipart."""

from __future__ import annotations

import socket

import pytest
import torch

from lerpray.anchors import (
    MANIFEST_NAME,
    AnchorSetError,
    ObjectNotFound,
    StoreError,
    build_anchor_set,
    load_anchor_set,
    open_store,
    verify_anchor_set,
)
from lerpray.anchors.s3 import MiB, S3Store

pytestmark = pytest.mark.integration

SECRET = "wJalrXUtnFEMI-do-not-print-me"
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def secret_env(s3_env, monkeypatch):
    """A recognisable secret key, to check that no error message ever carries it (moto accepts any key)."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return s3_env


def test_s3_round_trip_equals_local_set(tiny_anchor_set, s3_bucket, secret_env):
    local = load_anchor_set(tiny_anchor_set)
    uri = f"s3://{s3_bucket}/sets/tiny"
    manifest = build_anchor_set(local.manifest.base_model, _source_dirs(tiny_anchor_set, local), uri)
    assert open_store(uri).list() == sorted(open_store(tiny_anchor_set).list())
    remote = load_anchor_set(uri)
    assert remote.manifest == manifest and verify_anchor_set(uri) == []
    for a, b in zip(local.anchors, remote.anchors, strict=True):
        assert a.entry.files == b.entry.files and a.modules.keys() == b.modules.keys()
        for module, (A, B, scale) in a.modules.items():
            A2, B2, scale2 = b.modules[module]
            assert torch.equal(A, A2) and torch.equal(B, B2) and scale == scale2


def test_overwrite_on_s3_replaces_the_set(tiny_anchor_set, s3_bucket, secret_env):
    local = load_anchor_set(tiny_anchor_set)
    uri = f"s3://{s3_bucket}/sets/tiny"
    dirs = _source_dirs(tiny_anchor_set, local)
    build_anchor_set(local.manifest.base_model, dirs, uri)
    with pytest.raises(AnchorSetError, match="overwrite=True"):
        build_anchor_set(local.manifest.base_model, dirs, uri)
    sentiment = {k: v for k, v in dirs.items() if k.startswith("sentiment.")}
    assert build_anchor_set(local.manifest.base_model, sentiment, uri, overwrite=True).version == 2
    keys = open_store(uri).list()
    assert MANIFEST_NAME in keys and not any(k.startswith("formality.") for k in keys) and len(keys) == 5


def test_missing_bucket_names_it_and_says_what_to_check(tiny_anchor_set, secret_env):
    with pytest.raises(AnchorSetError, match="bucket 'no-such-bucket-here' does not exist.*bucket name") as err:
        load_anchor_set("s3://no-such-bucket-here/sets/x")
    assert SECRET not in str(err.value)
    local = load_anchor_set(tiny_anchor_set, verify=False)
    with pytest.raises(StoreError, match="no-such-bucket-here") as err:
        build_anchor_set(local.manifest.base_model, _source_dirs(tiny_anchor_set, local), "s3://no-such-bucket-here/x")
    assert SECRET not in str(err.value)
    assert "does not exist" in verify_anchor_set("s3://no-such-bucket-here/x")[0]


def test_missing_manifest_on_s3(s3_bucket, secret_env):
    with pytest.raises(AnchorSetError, match=f"no anchor set at s3://{s3_bucket}/empty: manifest missing"):
        load_anchor_set(f"s3://{s3_bucket}/empty")


def test_corrupted_object_is_caught(tiny_anchor_set, s3_bucket, s3_client, secret_env):
    local = load_anchor_set(tiny_anchor_set, verify=False)
    uri = f"s3://{s3_bucket}/sets/tiny"
    build_anchor_set(local.manifest.base_model, _source_dirs(tiny_anchor_set, local), uri)
    key = f"sets/tiny/sentiment.negative/{WEIGHTS}"
    data = bytearray(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(data))
    with pytest.raises(AnchorSetError, match=f"sentiment.negative/{WEIGHTS} is corrupt.*sha256 expected"):
        load_anchor_set(uri)
    problems = verify_anchor_set(uri)
    assert len(problems) == 1 and "sentiment.negative" in problems[0]


def test_large_objects_upload_in_parts(s3_bucket, s3_client, secret_env):
    store = S3Store(s3_bucket, "big", multipart_threshold=1 * MiB, multipart_chunksize=5 * MiB)
    payload = torch.randint(0, 256, (11 * MiB,), dtype=torch.uint8).numpy().tobytes()
    store.write_bytes("blob.bin", payload)
    etag = s3_client.head_object(Bucket=s3_bucket, Key="big/blob.bin")["ETag"]
    assert etag.strip('"').endswith("-3")  # a multipart upload's ETag counts its parts: 5 + 5 + 1 MiB
    assert store.read_bytes("blob.bin") == payload
    store.write_bytes("small.bin", b"x" * 1000)
    assert "-" not in s3_client.head_object(Bucket=s3_bucket, Key="big/small.bin")["ETag"]


def test_store_operations_and_retry_config(s3_bucket, secret_env):
    store = open_store(f"s3://{s3_bucket}/root")
    assert store.client.meta.config.retries["mode"] == "standard"
    for key in ("a/x", "a/y/z", "ab/x", "a.json"):
        store.write_bytes(key, key.encode())
    assert store.list("a") == ["a/x", "a/y/z"] and store.exists("a/x") and not store.exists("a/q")
    store.delete_prefix("a")
    assert store.list() == ["a.json", "ab/x"]
    with pytest.raises(ObjectNotFound):
        store.read_bytes("a/x")
    with pytest.raises(StoreError, match="'..' segment"):
        store.write_bytes("../escape", b"x")


@pytest.mark.parametrize(
    ("operation", "code", "call"),
    [
        ("head_object", "403", lambda store: store.read_bytes(MANIFEST_NAME)),  # a HEAD 403 has no body
        ("put_object", "AccessDenied", lambda store: store.write_bytes(MANIFEST_NAME, b"{}")),
    ],
)
def test_access_denied_is_explained_without_credentials(s3_env, monkeypatch, operation, code, call):
    from botocore.stub import Stubber

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    store = open_store("s3://locked-bucket/sets/x")
    with Stubber(store.client) as stub:
        stub.add_client_error(operation, service_error_code=code, http_status_code=403)
        with pytest.raises(StoreError, match="access denied.*locked-bucket.*AWS_PROFILE") as err:
            call(store)
    assert SECRET not in str(err.value) and "testing" not in str(err.value)


def test_unreachable_endpoint_is_named(s3_env):
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Store("some-bucket", "x", endpoint_url=f"http://user:pw@127.0.0.1:{port}", max_attempts=1)
    with pytest.raises(StoreError, match=f"endpoint http://127.0.0.1:{port} is reachable") as err:
        store.read_bytes(MANIFEST_NAME)
    assert "pw" not in str(err.value)


def _source_dirs(set_dir: str, loaded) -> dict:
    """The anchor folders of a local set (PEFT format) serve as source adapters for another publish."""
    from pathlib import Path

    return {a.entry.name: Path(set_dir) / a.entry.name for a in loaded.anchors}

"""Reliability and security of anchor-set storage under real faults and hostile input.

Each test is one row of docs/reliability.md. Faults are real: the S3 endpoint is our own moto server, stopped for
real (its listening socket closed, so connections are refused) in the middle of a publish; files are corrupted,
swapped, hand-edited or replaced by pickles whose unpickling would write a marker file.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import pickle
import re
import shutil
import socket
import traceback
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

import lerpray
from lerpray.anchors import (
    MANIFEST_NAME,
    AnchorSetError,
    BaseModelIdentity,
    LocalStore,
    Store,
    StoreError,
    build_anchor_set,
    check_compatible,
    load_anchor_set,
    open_store,
    verify_anchor_set,
)
from lerpray.anchors import commands as anchor_commands
from lerpray.anchors.format import sha256
from lerpray.anchors.s3 import MiB, S3Store

pytestmark = pytest.mark.integration

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
SECRET = "zQ9-secret-access-key-must-never-be-printed"
TOKEN = "zQ9-session-token-must-never-be-printed"


class S3Endpoint:
    """Our own moto S3 server on 127.0.0.1, stopped for real and restarted on the same port.

    moto keeps its objects in this process, so they survive a restart, as a real server's disk would.
    """

    def __init__(self):
        import boto3
        from moto.server import ThreadedMotoServer

        self._make = lambda port: ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server = self._make(0)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.bucket = f"sets-{uuid.uuid4().hex[:12]}"  # moto's state is per process, shared by every endpoint
        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1").create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        self._server.stop()  # werkzeug closes the listening socket; it keeps no connection alive between requests

    def restart(self) -> None:
        self._server = self._make(self.port)
        self._server.start()

    def is_up(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        except ConnectionRefusedError:
            return False
        return True


@pytest.fixture
def endpoint(s3_env, monkeypatch):
    """A fresh endpoint (not the session one) with an empty bucket `.bucket`; the AWS environment points at it."""
    server = S3Endpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    yield server
    if server.is_up():
        server.stop()


class StopAfterWrites(S3Store):
    """An S3 store that, once armed with n, stops its endpoint right after its n-th object write from then on."""

    def __init__(self, server: S3Endpoint):
        super().__init__(server.bucket, "tiny", endpoint_url=server.url, max_attempts=2)
        self.server, self.stop_after, self.writes = server, None, 0

    def arm(self, stop_after: int | None) -> None:
        self.stop_after, self.writes = stop_after, 0

    def write_bytes(self, key: str, data: bytes) -> None:
        super().write_bytes(key, data)
        self.writes += 1
        if self.writes == self.stop_after:
            self.server.stop()


def source_dirs(set_dir: str) -> dict[str, Path]:
    """The anchor folders of a local set (PEFT format), in coefficient order, as adapters for another publish."""
    manifest = json.loads((Path(set_dir) / MANIFEST_NAME).read_text())
    return {a["name"]: Path(set_dir) / a["name"] for a in manifest["anchors"]}


def base_of(set_dir: str) -> BaseModelIdentity:
    return BaseModelIdentity.model_validate(json.loads((Path(set_dir) / MANIFEST_NAME).read_text())["base_model"])


def assert_no_visible_set(uri: str | Store) -> None:
    with pytest.raises(AnchorSetError, match="manifest missing"):
        load_anchor_set(uri)
    assert "manifest missing" in " ".join(verify_anchor_set(uri))


# -- faults: the S3 endpoint stops in the middle of a publish --------------------------------------------------------

@pytest.mark.parametrize(("overwrite", "stop_after"), [(False, 3), (False, 8), (True, 2)],
                         ids=["fresh-after-3-of-9", "fresh-after-8-of-9", "overwrite-after-2-of-9"])
def test_endpoint_stopped_mid_publish_leaves_no_visible_set(tiny_anchor_set, endpoint, overwrite, stop_after):
    dirs, base = source_dirs(tiny_anchor_set), base_of(tiny_anchor_set)
    store = StopAfterWrites(endpoint)
    if overwrite:
        build_anchor_set(base, dirs, store)  # version 1, complete: the interrupted overwrite must hide it
    store.arm(stop_after)
    with pytest.raises(StoreError, match=f"endpoint {endpoint.url} is reachable"):
        build_anchor_set(base, dirs, store, overwrite=overwrite)
    assert store.writes == stop_after and not endpoint.is_up()  # the stop was real: connections are refused
    with pytest.raises(StoreError, match="reachable"):  # while it is down: an error, never a half set
        load_anchor_set(store)

    endpoint.restart()
    left = store.list()
    assert len(left) == stop_after and MANIFEST_NAME not in left  # the partial files are there, and invisible
    assert_no_visible_set(store)
    store.arm(None)
    manifest = build_anchor_set(base, dirs, store)  # leftovers are not a set: no overwrite flag needed
    assert verify_anchor_set(store) == [] and len(store.list()) == 9
    assert load_anchor_set(store).manifest == manifest


def test_endpoint_stopped_mid_multipart_object(tiny_anchor_set, endpoint, tmp_path):
    """The stop lands inside one object: after its first uploaded part (an 11 MiB adapter in 5 MiB parts)."""
    d = 1024
    dirs = {"size.big": hand_adapter(tmp_path / "big", r=1400, d=d),
            "size.small": hand_adapter(tmp_path / "small", r=4, d=d)}
    store = S3Store(endpoint.bucket, "tiny", endpoint_url=endpoint.url, max_attempts=2, multipart_threshold=MiB,
                    multipart_chunksize=5 * MiB)
    parts = []

    def stop_after_first_part(**_):
        parts.append(1)
        if len(parts) == 1:
            endpoint.stop()

    store.client.meta.events.register("after-call.s3.UploadPart", stop_after_first_part)
    with pytest.raises(StoreError, match="reachable"):
        build_anchor_set(base_of(tiny_anchor_set), dirs, store)
    assert parts and not endpoint.is_up()
    endpoint.restart()
    store.client.meta.events.unregister("after-call.s3.UploadPart", stop_after_first_part)
    assert store.list() == ["size.big/adapter_config.json"]  # the half-uploaded object is not there ...
    uploads = store.client.list_multipart_uploads(Bucket=endpoint.bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [f"tiny/size.big/{WEIGHTS}"]  # ... because the stop landed inside it
    assert_no_visible_set(store)
    build_anchor_set(base_of(tiny_anchor_set), dirs, store)
    assert verify_anchor_set(store) == []


def hand_adapter(folder: Path, *, r: int, d: int) -> Path:
    """A PEFT-format LoRA adapter of one [d, d] q_proj, written by hand (no model needed)."""
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": r, "bias": "none", "target_modules": ["q_proj"]}
    (folder / CONFIG).write_text(json.dumps(config))
    g = torch.Generator().manual_seed(r)
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    (folder / WEIGHTS).write_bytes(save({f"{module}.lora_A.weight": torch.randn(r, d, generator=g),  # [r, d_in]
                                         f"{module}.lora_B.weight": torch.randn(d, r, generator=g)}))  # [d_out, r]
    return folder


# -- faults: corrupted, swapped, hand-edited files; another base model -----------------------------------------------
# Flipped bytes, truncation, missing files and a corrupt S3 object are in test_anchor_sets.py / test_s3_store.py.

@pytest.fixture
def set_copy(tiny_anchor_set, tmp_path) -> Path:
    dest = tmp_path / "set"
    shutil.copytree(tiny_anchor_set, dest)
    return dest


def test_weights_swapped_between_anchors_are_refused(set_copy):
    pos, neg, formal = (set_copy / n / WEIGHTS for n in ("sentiment.positive", "sentiment.negative", "formality.formal"))
    a, b = pos.read_bytes(), neg.read_bytes()
    pos.write_bytes(b)
    neg.write_bytes(a)  # same shapes: only the digests can tell
    with pytest.raises(AnchorSetError, match=f"sentiment.positive/{WEIGHTS} is corrupt.*expected {sha256(a)}, "
                                             f"actual {sha256(b)}"):
        load_anchor_set(str(set_copy))
    problems = verify_anchor_set(str(set_copy))
    assert len(problems) == 2 and "sentiment.positive" in problems[0] and "sentiment.negative" in problems[1]
    pos.write_bytes(formal.read_bytes())  # rank 2 weights under a rank-4 config: refused even without digests
    with pytest.raises(AnchorSetError, match=r"sentiment.positive: module .* with r=4"):
        load_anchor_set(str(set_copy), verify=False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rank", 8, "rank: manifest 8, adapter 4"),
        ("lora_alpha", 16.0, "lora_alpha: manifest 16.0, adapter 8.0"),
        ("use_rslora", True, "use_rslora: manifest True, adapter False"),
        ("target_modules", ["q_proj", "v_proj"], "target_modules: manifest \\['q_proj', 'v_proj'\\]"),
        ("rank_pattern", {"q_proj": 2}, "rank_pattern: manifest {'q_proj': 2}, adapter {}"),
    ],
)
def test_manifest_edited_to_claim_other_lora_fields_is_refused(set_copy, field, value, message):
    manifest = json.loads((set_copy / MANIFEST_NAME).read_text())
    manifest["anchors"][0][field] = value  # sentiment.positive; its files' digests still match
    (set_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    for verify in (True, False):
        with pytest.raises(AnchorSetError, match=f"sentiment.positive: the manifest disagrees.*{message}"):
            load_anchor_set(str(set_copy), verify=verify)
    problems = verify_anchor_set(str(set_copy))
    assert len(problems) == 1 and "republish" in problems[0]


def test_truncated_manifest_is_refused(set_copy):
    data = (set_copy / MANIFEST_NAME).read_bytes()
    (set_copy / MANIFEST_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(AnchorSetError, match="manifest of .* is not a JSON object.*rebuild"):
        load_anchor_set(str(set_copy))


def test_set_for_another_base_model_is_refused_before_injection(tiny_anchor_set):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lerpray.model import interpolate
    from lerpray.model.base import model_identity

    # Same architecture, hidden size, layers and vocab as the set's base model; only the MLP width differs, so
    # only the parameter-shape checksum can tell (the anchors' q/k/v/o shapes would fit it).
    config = LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    other = LlamaForCausalLM(config).eval()
    anchor_set = load_anchor_set(tiny_anchor_set)
    with pytest.raises(AnchorSetError, match="built for base model 'tiny-llama'.*checksum: set"):
        check_compatible(anchor_set.manifest, model_identity(other, "other"))
    with pytest.raises(AnchorSetError, match="checksum"):
        interpolate(other, anchor_set)
    assert type(other.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # nothing was injected


# -- security: nothing escapes the store root ------------------------------------------------------------------------

HOSTILE_NAMES = ["../evil.positive", "sentiment/../../x.positive", "/abs.positive", "..%2f..%2fx.positive",
                 "sentiment.positive/../..", "sentiment\\..\\x.positive"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_hostile_anchor_names_are_refused_before_any_write(tiny_anchor_set, tmp_path, where, request):
    dirs, base = source_dirs(tiny_anchor_set), base_of(tiny_anchor_set)
    root = f"s3://{request.getfixturevalue('s3_bucket')}" if where == "s3" else str(tmp_path / "root")
    for name in HOSTILE_NAMES:
        adapters = {**dirs, name: dirs["sentiment.positive"]}
        with pytest.raises(AnchorSetError, match="must be 'attribute.pole'"):
            build_anchor_set(base, adapters, f"{root}/inner")
    assert open_store(root).list() == []  # nothing written anywhere, inside the root or out of it


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"name": "../sentiment.positive"}, "anchors.0.name.*should match pattern"),
        ({"files": {"sentiment.positive/../../outside/secret": "0" * 64}}, "must be 'sentiment.positive/<file name>'"),
        ({"files": {"/etc/passwd": "0" * 64}}, "must be 'sentiment.positive/<file name>'"),
        ({"files": {"sentiment.positive/..%2f..%2foutside%2fsecret": "0" * 64}}, "<file name>"),
        ({"files": {"sentiment.positive/..\\..\\outside\\secret": "0" * 64}}, "<file name>"),
        ({"files": {"sentiment.positive/..": "0" * 64}}, "<file name>"),
    ],
)
def test_hostile_manifest_paths_are_refused_before_any_read(set_copy, edit, message):
    manifest = json.loads((set_copy / MANIFEST_NAME).read_text())
    manifest["anchors"][0].update(edit)
    (set_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    (set_copy.parent / "outside").mkdir()
    (set_copy.parent / "outside" / "secret").write_text("s")
    reads = []

    class Recording(LocalStore):
        def read_bytes(self, key: str) -> bytes:
            reads.append(key)
            return super().read_bytes(key)

    with pytest.raises(AnchorSetError, match=f"(?s)manifest of .* is invalid.*{message}"):
        load_anchor_set(Recording(set_copy))
    assert reads == [MANIFEST_NAME]


def test_encoded_keys_stay_literal_inside_the_root(tmp_path, s3_bucket, s3_client):
    local = LocalStore(tmp_path / "root")
    s3 = open_store(f"s3://{s3_bucket}/p")
    for store in (local, s3):
        for key in ("%2e%2e/x", "..%2fy", "%2E%2E%5Cz"):
            store.write_bytes(key, b"k")
            assert store.read_bytes(key) == b"k"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing landed next to the root
    assert sorted(p.relative_to(tmp_path / "root").as_posix() for p in (tmp_path / "root").rglob("*")
                  if p.is_file()) == ["%2E%2E%5Cz", "%2e%2e/x", "..%2fy"]
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert sorted(keys) == ["p/%2E%2E%5Cz", "p/%2e%2e/x", "p/..%2fy"]  # literal keys, all under the prefix
    with pytest.raises(StoreError, match="'..' segment"):
        open_store(f"s3://{s3_bucket}/p/../q")


def test_symlinks_out_of_the_root_are_refused(set_copy, tiny_anchor_set):
    outside = set_copy.parent / "outside"
    shutil.copytree(set_copy / "sentiment.negative", outside)
    kept = sorted(p.name for p in outside.iterdir())
    # 1. a weights file that is a symlink to a file outside the root
    (set_copy / "sentiment.negative" / WEIGHTS).unlink()
    (set_copy / "sentiment.negative" / WEIGHTS).symlink_to(outside / WEIGHTS)
    with pytest.raises(StoreError, match="resolves outside the store root"):
        load_anchor_set(str(set_copy))
    # 2. a whole anchor folder that is a symlink out of the root; an overwrite must not delete through it
    shutil.rmtree(set_copy / "sentiment.negative")
    (set_copy / "sentiment.negative").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="resolves outside the store root"):
        load_anchor_set(str(set_copy))
    with pytest.raises(StoreError, match="resolves outside the store root"):
        build_anchor_set(base_of(tiny_anchor_set), source_dirs(tiny_anchor_set), str(set_copy), overwrite=True)
    # 3. a fresh publish into leftovers with that symlink does not write through it
    with pytest.raises(StoreError, match="resolves outside the store root"):
        build_anchor_set(base_of(tiny_anchor_set), source_dirs(tiny_anchor_set), str(set_copy))
    assert sorted(p.name for p in outside.iterdir()) == kept
    assert (outside / WEIGHTS).read_bytes() == (Path(tiny_anchor_set) / "sentiment.negative" / WEIGHTS).read_bytes()


# -- security: only safetensors, never unpickled ---------------------------------------------------------------------

class Armed:
    """Unpickling this creates `marker` (an attacker would run any code instead)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(params=["raw-pickle", "torch-save-zip"])
def armed_payload(request, tmp_path) -> tuple[bytes, Path]:
    """Pickle bytes whose unpickling writes a marker file; checked to be armed before use."""
    marker = tmp_path / "UNPICKLED"
    if request.param == "raw-pickle":
        payload = pickle.dumps(Armed(marker))
        pickle.loads(payload)
    else:
        buffer = io.BytesIO()
        torch.save({"base_model.model.q_proj.lora_A.weight": Armed(marker)}, buffer)
        payload = buffer.getvalue()
        torch.load(io.BytesIO(payload), weights_only=False)
    assert marker.exists(), "the payload must be armed for the test to mean anything"
    marker.unlink()
    return payload, marker


def test_pickle_adapters_are_never_unpickled_at_build(tiny_anchor_set, tiny_anchor_dirs, armed_payload, tmp_path):
    payload, marker = armed_payload
    base = base_of(tiny_anchor_set)
    as_bin, disguised = tmp_path / "bin", tmp_path / "disguised"
    for folder, name in ((as_bin, "adapter_model.bin"), (disguised, WEIGHTS)):
        folder.mkdir()
        shutil.copy(tiny_anchor_dirs["sentiment.positive"] / CONFIG, folder)
        (folder / name).write_bytes(payload)
    shutil.copy(tiny_anchor_dirs["sentiment.positive"] / WEIGHTS, as_bin)  # a .bin next to good safetensors
    for folder, message in ((as_bin, r"adapter_model.bin \(pickle\)"), (disguised, "unreadable adapter")):
        with pytest.raises(AnchorSetError, match=message):
            build_anchor_set(base, {**tiny_anchor_dirs, "sentiment.positive": folder}, tmp_path / "set")
    assert not marker.exists() and not (tmp_path / "set").exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_pickle_in_a_published_set_is_never_unpickled(tiny_anchor_set, armed_payload, tmp_path, where, request):
    """The weights are replaced by the pickle and the manifest's digest updated to match, so only parsing is left."""
    payload, marker = armed_payload
    if where == "s3":
        store = open_store(f"s3://{request.getfixturevalue('s3_bucket')}/set")
        build_anchor_set(base_of(tiny_anchor_set), source_dirs(tiny_anchor_set), store)
    else:
        shutil.copytree(tiny_anchor_set, tmp_path / "set")
        store = open_store(tmp_path / "set")
    key = f"sentiment.positive/{WEIGHTS}"
    manifest = json.loads(store.read_bytes(MANIFEST_NAME))
    manifest["anchors"][0]["files"][key] = sha256(payload)
    store.write_bytes(key, payload)
    store.write_bytes(MANIFEST_NAME, json.dumps(manifest).encode())
    for verify in (True, False):
        with pytest.raises(AnchorSetError, match="sentiment.positive: unreadable adapter"):
            load_anchor_set(store, verify=verify)
    assert "unreadable adapter" in verify_anchor_set(store)[0]
    assert not marker.exists()


# -- security: credentials never in error messages or lerpray's logs -------------------------------------------------

def _texts(err: BaseException) -> str:
    """The message and the whole printed traceback, chained causes included."""
    return str(err) + "".join(traceback.format_exception(err))


def _auth(endpoint: S3Endpoint, count: str) -> None:
    """moto's server-mode switch: "0" = check every request's credentials from now on, "inf" = never."""
    request = urllib.request.Request(f"{endpoint.url}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).read()


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lerpray")
    anchor_commands.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_credentials_never_appear_in_errors_or_lerpray_logs(tiny_anchor_set, endpoint, monkeypatch, caplog, capsys):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)  # every logger: lerpray, boto3, botocore, s3transfer, urllib3
    dirs, base = source_dirs(tiny_anchor_set), base_of(tiny_anchor_set)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    errors: list[BaseException] = []

    def expect(message: str, call) -> None:
        with pytest.raises(AnchorSetError, match=message) as err:
            call()
        errors.append(err.value)

    _auth(endpoint, "0")  # denied: moto now checks the (unknown) access key of every request
    try:
        expect("access denied", lambda: load_anchor_set(f"s3://{endpoint.bucket}/x"))
        expect("access denied", lambda: build_anchor_set(base, dirs, f"s3://{endpoint.bucket}/x"))
    finally:
        _auth(endpoint, "inf")
    expect("does not exist", lambda: load_anchor_set("s3://no-such-bucket-zq9/x"))
    expect("does not exist", lambda: build_anchor_set(base, dirs, "s3://no-such-bucket-zq9/x"))
    unreachable = S3Store("any-bucket", "x", endpoint_url=f"http://key:{SECRET}@127.0.0.1:{closed}", max_attempts=1)
    expect("reachable", lambda: load_anchor_set(unreachable))
    expect("carries credentials", lambda: open_store(f"s3://AKIDZQ9:{SECRET}@any-bucket/x"))
    assert run_cli("anchors", "verify", "s3://no-such-bucket-zq9/x") == 1

    cli = capsys.readouterr()
    texts = [_texts(e) for e in errors] + [cli.out + cli.err]
    assert len(errors) == 6 and not [t for t in texts if SECRET in t or TOKEN in t]
    records = caplog.records
    assert records, "DEBUG logging was not captured"
    assert not [r for r in records if SECRET in r.getMessage()]  # no logger at all, botocore included
    leaking = {r.name for r in records if TOKEN in r.getMessage()}
    assert not {n for n in leaking if n.startswith("lerpray")}, leaking  # botocore's DEBUG does: see the doc


BOTO_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def _boto_logging() -> dict[str, tuple[int, list[str]]]:
    return {n: (logging.getLogger(n).level, [type(h).__name__ for h in logging.getLogger(n).handlers])
            for n in BOTO_LOGGERS}


def test_lerpray_never_enables_boto_debug_logging(endpoint, tiny_anchor_set, capsys):
    """botocore's DEBUG logs print session tokens (see docs/reliability.md): lerpray must never switch them on."""
    before = _boto_logging()
    store = S3Store(endpoint.bucket, "x")
    build_anchor_set(base_of(tiny_anchor_set), source_dirs(tiny_anchor_set), store)
    assert load_anchor_set(store).manifest.version == 1
    assert run_cli("anchors", "verify", f"s3://{endpoint.bucket}/x") == 0
    assert run_cli("anchors", "verify", "s3://no-such-bucket-zq9/x") == 1
    assert _boto_logging() == before
    assert all(level != logging.DEBUG and set(handlers) <= {"NullHandler"} for level, handlers in before.values())
    assert "DEBUG" not in capsys.readouterr().err
    # No code path at all, not just the ones run above: boto's own switch, its loggers, or DEBUG for everyone.
    switches = re.compile(r"set_stream_logger|getLogger\(\s*[\"'](botocore|boto3|s3transfer|urllib3)|"
                          r"basicConfig\([^)]*DEBUG")
    offenders = [str(path) for path in Path(lerpray.__file__).parent.rglob("*.py") if switches.search(path.read_text())]
    assert offenders == [], f"these modules turn on boto's DEBUG logs or configure its loggers: {offenders}"

"""Versioned anchor sets (tiny Llama, local store): immutable versions, aliases, refs, extension, bad input, CLI."""

from __future__ import annotations

import json

import pytest

from lerpray.anchors import (
    MANIFEST_NAME,
    AnchorSetError,
    LocalStore,
    alias_targets,
    build_anchor_set,
    list_versions,
    load_anchor_set,
    open_store,
    publish_version,
    set_alias,
    split_ref,
)
from lerpray.cli import main
from lerpray.model.base import model_identity
from lerpray.testing import tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.component


@pytest.fixture(scope="module")
def identity(tiny_llama_model):
    return model_identity(tiny_llama_model, "tiny-llama")


def _only(dirs, attribute):
    return {k: v for k, v in dirs.items() if k.startswith(f"{attribute}.")}


def test_split_ref():
    assert split_ref("s3://b/sets/s@prod") == ("s3://b/sets/s", "prod")
    assert split_ref("/tmp/set@3") == ("/tmp/set", "3")
    assert split_ref("/tmp/a@b/set") == ("/tmp/a@b/set", None)
    assert split_ref("s3://b/set") == ("s3://b/set", None)


def test_versions_are_immutable_and_aliases_move(tiny_anchor_dirs, identity, tmp_path):
    root = tmp_path / "set"
    m1 = publish_version(identity, _only(tiny_anchor_dirs, "sentiment"), root, training={"run_id": "r1"})
    v1_bytes = {k: (root / "versions/1" / k).read_bytes() for k in LocalStore(root / "versions/1").list()}
    m2 = publish_version(identity, tiny_anchor_dirs, root, training={"run_id": "r2"})
    assert (m1.version, m2.version) == (1, 2)
    assert {k: (root / "versions/1" / k).read_bytes() for k in v1_bytes} == v1_bytes  # version 1 untouched
    assert alias_targets(open_store(root)) == {"latest": 2}
    assert load_anchor_set(root).manifest.version == 2  # bare root = latest
    assert load_anchor_set(f"{root}@1").manifest.attributes.keys() == {"sentiment"}
    set_alias(open_store(root), "prod", 1)
    assert load_anchor_set(f"{root}@prod").manifest.version == 1
    infos = list_versions(open_store(root))
    assert [(v.version, v.aliases, v.manifest.training["run_id"]) for v in infos] == [(1, ("prod",), "r1"),
                                                                                      (2, ("latest",), "r2")]


def test_unversioned_set_still_loads_and_refuses_versions(tiny_anchor_dirs, identity, tmp_path):
    legacy = tmp_path / "legacy"
    build_anchor_set(identity, tiny_anchor_dirs, legacy)
    assert load_anchor_set(legacy).manifest.version == 1
    with pytest.raises(AnchorSetError, match="unversioned"):
        publish_version(identity, tiny_anchor_dirs, legacy)


def test_extending_carries_old_anchors_byte_for_byte(tiny_anchor_dirs, identity, tmp_path):
    root = tmp_path / "set"
    old = publish_version(identity, _only(tiny_anchor_dirs, "sentiment"), root)
    new = publish_version(identity, _only(tiny_anchor_dirs, "formality"), root, extends=f"{root}@latest")
    assert [a.name for a in new.anchors] == ["sentiment.positive", "sentiment.negative", "formality.formal",
                                             "formality.informal"]
    assert new.anchors[:2] == old.anchors  # same entries: same sha256 of every file
    for entry in old.anchors:
        for path in entry.files:
            assert (root / "versions/2" / path).read_bytes() == (root / "versions/1" / path).read_bytes()
    assert len(load_anchor_set(root).anchors) == 4  # verified on load
    with pytest.raises(AnchorSetError, match="already in"):
        publish_version(identity, _only(tiny_anchor_dirs, "formality"), root, extends=str(root))


def test_extending_another_base_model_is_refused(tiny_anchor_dirs, identity, tmp_path):
    root = tmp_path / "set"
    publish_version(identity, _only(tiny_anchor_dirs, "sentiment"), root)
    other = model_identity(tiny_llama(hidden_size=48), "wider")
    with pytest.raises(AnchorSetError, match="hidden_size"):
        publish_version(other, _only(tiny_anchor_dirs, "formality"), root, extends=str(root))
    assert [v.version for v in list_versions(open_store(root))] == [1]  # nothing published


def test_bad_refs_and_corrupt_versions_fail_with_clear_errors(tiny_anchor_dirs, identity, tmp_path):
    root = tmp_path / "set"
    publish_version(identity, tiny_anchor_dirs, root)
    with pytest.raises(AnchorSetError, match=r"no alias 'prod' \(aliases: latest\)"):
        load_anchor_set(f"{root}@prod")
    (root / "aliases").mkdir(exist_ok=True)
    (root / "aliases/stale.json").write_text(json.dumps({"version": 7}))
    with pytest.raises(AnchorSetError, match=r"no complete version 7 \(alias 'stale'\); complete versions: \[1\]"):
        load_anchor_set(f"{root}@stale")
    with pytest.raises(AnchorSetError, match="no complete version 9"):
        set_alias(open_store(root), "prod", 9)
    weights = root / "versions/1/sentiment.positive/adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(AnchorSetError, match="corrupt or truncated"):
        load_anchor_set(f"{root}@1")


def test_an_incomplete_version_is_listed_but_never_reused(tiny_anchor_dirs, identity, tmp_path):
    root = tmp_path / "set"
    publish_version(identity, tiny_anchor_dirs, root)
    (root / "versions/2/sentiment.positive").mkdir(parents=True)  # a publish that died before its manifest
    (root / "versions/2/sentiment.positive/adapter_config.json").write_text("{}")
    assert publish_version(identity, tiny_anchor_dirs, root).version == 3
    assert [(v.version, v.complete) for v in list_versions(open_store(root))] == [(1, True), (2, False), (3, True)]
    assert not (root / "versions/2" / MANIFEST_NAME).exists()


def run_cli(*argv: str) -> int:
    return main(list(argv))


def test_cli_new_version_list_alias(tiny_llama_model, tiny_anchor_dirs, tmp_path, capsys):
    base = tmp_path / "base"
    tiny_llama_model.save_pretrained(str(base))
    tiny_tokenizer().save_pretrained(str(base))
    out = str(tmp_path / "set")
    sentiment = [f"--anchor={n}={p}" for n, p in _only(tiny_anchor_dirs, "sentiment").items()]
    formality = [f"--anchor={n}={p}" for n, p in _only(tiny_anchor_dirs, "formality").items()]
    assert run_cli("anchors", "build", "--base", str(base), *sentiment, "--out", out, "--new-version") == 0
    assert run_cli("anchors", "build", "--base", str(base), *formality, "--out", out, "--new-version",
                   "--extends", f"{out}@1") == 0
    assert run_cli("anchors", "alias", "set", out, "prod", "1") == 0
    capsys.readouterr()
    assert run_cli("anchors", "list", out) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["VERSION", "CREATED", "ATTRIBUTES", "ANCHORS", "RUN", "ALIASES"]
    assert rows[1].split()[2:] == ["sentiment", "2", "-", "prod"]
    assert rows[2].split()[2:] == ["sentiment,formality", "4", "-", "latest"]
    assert run_cli("anchors", "alias", "show", out) == 0
    assert capsys.readouterr().out.split() == ["latest", "2", "prod", "1"]
    assert run_cli("anchors", "verify", f"{out}@prod") == 0

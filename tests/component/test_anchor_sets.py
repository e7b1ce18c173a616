"""Anchor sets of a tiny Llama's random PEFT adapters: publish, load, verify, overwrite, failures, CLI."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from lerpray.anchors import (
    MANIFEST_NAME,
    AnchorSetError,
    AttributePoles,
    LocalStore,
    build_anchor_set,
    check_compatible,
    load_anchor_set,
    read_adapter,
    verify_anchor_set,
)
from lerpray.anchors import commands as anchor_commands
from lerpray.model.base import model_identity
from lerpray.testing import random_adapter, tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.component

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def identity(tiny_llama_model):
    return model_identity(tiny_llama_model, "tiny-llama")


def test_round_trip_equals_the_source_adapters(tiny_anchor_dirs, identity, tmp_path):
    training = {"config": {"steps": 60, "lr": 1e-4}, "final": {"loss": 1.5}}
    metrics = {"sentiment.positive": {"loss": 1.25, "steps": 60}}
    manifest = build_anchor_set(identity, tiny_anchor_dirs, tmp_path / "set", training=training, metrics=metrics)
    loaded = load_anchor_set(str(tmp_path / "set"))

    assert loaded.manifest == manifest and manifest.version == 1
    assert [a.entry.name for a in loaded.anchors] == list(tiny_anchor_dirs)  # coefficient order = given order
    assert manifest.base_model == identity and manifest.training == training
    assert manifest.anchors[0].metrics == {"loss": 1.25, "steps": 60}
    assert manifest.attributes == {"sentiment": AttributePoles(high="positive", low="negative"),
                                   "formality": AttributePoles(high="formal", low="informal")}
    for anchor in loaded.anchors:
        _, source = read_adapter(tiny_anchor_dirs[anchor.entry.name])
        assert anchor.modules.keys() == source.keys() and len(source) == 8  # 4 projections x 2 layers
        for module, (A, B, scale) in source.items():
            A2, B2, scale2 = anchor.modules[module]
            assert torch.equal(A, A2) and torch.equal(B, B2) and scale == scale2
        assert anchor.entry.target_modules == ["k_proj", "o_proj", "q_proj", "v_proj"]
        for path, digest in anchor.entry.files.items():  # the published bytes are the source bytes
            published = (tmp_path / "set" / path).read_bytes()
            assert hashlib.sha256(published).hexdigest() == digest
            assert published == (tiny_anchor_dirs[anchor.entry.name] / Path(path).name).read_bytes()


def test_peft_loads_every_published_anchor_folder(tiny_llama_model, tiny_anchor_set):
    from peft import PeftModel

    loaded = load_anchor_set(tiny_anchor_set)
    for anchor in loaded.anchors:
        peft_model = PeftModel.from_pretrained(copy.deepcopy(tiny_llama_model), str(Path(tiny_anchor_set) /
                                                                                    anchor.entry.name))
        for module, (A, B, scale) in anchor.modules.items():
            layer = peft_model.base_model.model.get_submodule(module)
            assert torch.equal(layer.lora_A["default"].weight, A)
            assert torch.equal(layer.lora_B["default"].weight, B)
            assert layer.scaling["default"] == pytest.approx(scale)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_rank_and_alpha_patterns_give_peft_own_scales(tiny_llama_model, tmp_path, use_rslora):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                        rank_pattern={"q_proj": 2, "layers.1.self_attn.v_proj": 6},
                        alpha_pattern={"o_proj": 3, "mlp.down_proj": 5}, use_rslora=use_rslora,
                        init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(tiny_llama_model), config)
    peft_model.save_pretrained(str(tmp_path))
    _, modules = read_adapter(tmp_path)
    peft_layers = {name.removeprefix("base_model.model."): m for name, m in peft_model.named_modules()
                   if isinstance(m, LoraLayer)}
    assert modules.keys() == peft_layers.keys() and len(modules) == 8
    for module, (A, B, scale) in modules.items():
        layer = peft_layers[module]
        assert scale == pytest.approx(layer.scaling["default"])
        assert torch.equal(A, layer.lora_A["default"].weight) and torch.equal(B, layer.lora_B["default"].weight)
    assert modules["model.layers.1.self_attn.v_proj"][0].shape[0] == 6  # the patterns did apply


def test_flipped_or_truncated_file_is_caught_with_both_digests(tiny_anchor_set, tmp_path):
    dest = tmp_path / "set"
    shutil.copytree(tiny_anchor_set, dest)
    target = dest / "formality.formal" / WEIGHTS
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # same length, one byte differs: only the digest can tell
    target.write_bytes(bytes(data))
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    expected = next(a for a in manifest["anchors"] if a["name"] == "formality.formal")["files"][
        f"formality.formal/{WEIGHTS}"]
    with pytest.raises(AnchorSetError, match=rf"formality.formal/{WEIGHTS} is corrupt.*expected {expected}, actual"):
        load_anchor_set(str(dest))
    (dest / "sentiment.negative" / WEIGHTS).write_bytes(bytes(data[:100]))  # truncated
    problems = verify_anchor_set(str(dest))
    assert len(problems) == 2 and "sentiment.negative" in problems[0] and "(100 bytes)" in problems[0]
    assert "formality.formal" in problems[1]
    assert verify_anchor_set(tiny_anchor_set) == []


def test_pickle_adapter_is_refused_without_loading_it(tiny_anchor_dirs, identity, tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_anchor_dirs["sentiment.positive"] / "adapter_config.json", folder)
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be called"))
    adapters = {**tiny_anchor_dirs, "sentiment.positive": folder}
    with pytest.raises(AnchorSetError, match="adapter_model.bin \\(pickle\\).*safetensors"):
        build_anchor_set(identity, adapters, tmp_path / "set")
    assert not (tmp_path / "set").exists()


def test_overwrite_needs_the_flag_and_bumps_the_version(tiny_anchor_dirs, identity, tmp_path):
    dest = str(tmp_path / "set")
    sentiment = {k: v for k, v in tiny_anchor_dirs.items() if k.startswith("sentiment.")}
    build_anchor_set(identity, tiny_anchor_dirs, dest)
    with pytest.raises(AnchorSetError, match="already exists.*overwrite=True.*--overwrite"):
        build_anchor_set(identity, sentiment, dest)
    manifest = build_anchor_set(identity, sentiment, dest, overwrite=True)
    assert manifest.version == 2 and load_anchor_set(dest).manifest.version == 2
    assert LocalStore(dest).list() == sorted([MANIFEST_NAME, *(f"{n}/{f}" for n in sentiment
                                                               for f in ("adapter_config.json", WEIGHTS))])
    assert build_anchor_set(identity, sentiment, dest, overwrite=True).version == 3


class FailingStore(LocalStore):
    """Fails on the n-th write, like a process killed mid-publish."""

    def __init__(self, root, fail_at: int):
        super().__init__(root)
        self.writes, self.fail_at = 0, fail_at

    def write_bytes(self, key: str, data: bytes) -> None:
        self.writes += 1
        if self.writes == self.fail_at:
            raise OSError("disk vanished")
        super().write_bytes(key, data)


def test_interrupted_publish_leaves_no_visible_set(tiny_anchor_dirs, identity, tmp_path):
    dest = tmp_path / "set"
    with pytest.raises(OSError):
        build_anchor_set(identity, tiny_anchor_dirs, FailingStore(dest, fail_at=3))
    assert (dest / "sentiment.positive" / WEIGHTS).exists() and not (dest / MANIFEST_NAME).exists()
    with pytest.raises(AnchorSetError, match="no anchor set at .*manifest missing.*publish interrupted"):
        load_anchor_set(str(dest))
    assert "manifest missing" in verify_anchor_set(str(dest))[0]
    build_anchor_set(identity, tiny_anchor_dirs, str(dest))  # leftovers are not a set: no --overwrite needed
    # An interrupted overwrite hides the old set too (its manifest goes first), never a half-new one.
    with pytest.raises(OSError):
        build_anchor_set(identity, tiny_anchor_dirs, FailingStore(dest, fail_at=2), overwrite=True)
    with pytest.raises(AnchorSetError, match="manifest missing"):
        load_anchor_set(str(dest))


def test_missing_file_and_mismatched_shapes_are_reported(tiny_anchor_dirs, identity, tiny_anchor_set, tmp_path):
    dest = tmp_path / "set"
    shutil.copytree(tiny_anchor_set, dest)
    (dest / "sentiment.positive" / "adapter_config.json").unlink()
    assert "sentiment.positive/adapter_config.json is listed in the manifest but missing" in \
        verify_anchor_set(str(dest))[0]
    wider = random_adapter(tiny_llama(hidden_size=48), tmp_path / "wider")
    with pytest.raises(AnchorSetError, match="same base model"):
        build_anchor_set(identity, {**tiny_anchor_dirs, "sentiment.negative": wider}, tmp_path / "other")


def test_check_compatible_with_another_model(tiny_anchor_set):
    manifest = load_anchor_set(tiny_anchor_set, verify=False).manifest
    check_compatible(manifest, manifest.base_model)
    with pytest.raises(AnchorSetError, match="hidden_size: set 32, given 48"):
        check_compatible(manifest, model_identity(tiny_llama(hidden_size=48), "wider"))


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lerpray")
    anchor_commands.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_build_inspect_verify(tiny_llama_model, tiny_anchor_dirs, tmp_path, capsys):
    base = tmp_path / "base"
    tiny_llama_model.save_pretrained(str(base))
    tiny_tokenizer().save_pretrained(str(base))
    out = str(tmp_path / "set")
    anchors = [f"--anchor={name}={path}" for name, path in tiny_anchor_dirs.items()]
    assert run_cli("anchors", "build", "--base", str(base), *anchors, "--high", "formality=informal",
                   "--out", out) == 0
    with pytest.raises(AnchorSetError, match="--overwrite"):
        run_cli("anchors", "build", "--base", str(base), *anchors, "--out", out)
    capsys.readouterr()
    assert run_cli("anchors", "inspect", out) == 0
    table = capsys.readouterr().out
    assert "informal (high)" in table and "formal (low)" in table and "positive (high)" in table
    assert "LlamaForCausalLM" in table and "k_proj,o_proj,q_proj,v_proj" in table
    assert run_cli("anchors", "verify", out) == 0 and "OK" in capsys.readouterr().out
    (Path(out) / "sentiment.negative" / WEIGHTS).write_bytes(b"truncated")
    assert run_cli("anchors", "verify", out) == 1
    assert "sentiment.negative/adapter_model.safetensors is corrupt" in capsys.readouterr().err

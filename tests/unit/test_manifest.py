"""Manifest validation, PEFT key parsing (rank/alpha patterns), pole defaults and store key safety."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save

from lerpray.anchors import (
    AnchorSetError,
    AttributePoles,
    BaseModelIdentity,
    LocalStore,
    Manifest,
    ObjectNotFound,
    StoreError,
    check_compatible,
    check_key,
    open_store,
    parse_adapter,
)
from lerpray.anchors.peft_io import pattern_key
from lerpray.anchors.publish import default_poles, plan_attributes
from lerpray.anchors.s3 import S3Store

pytestmark = pytest.mark.unit

SHA = "ab" * 32
BASE = {"name": "tiny", "checksum": "c0ffee", "architecture": "LlamaForCausalLM", "hidden_size": 32,
        "num_layers": 2, "vocab_size": 384}


def entry(name: str, **overrides) -> dict:
    attribute, pole = name.split(".")
    files = {f"{name}/adapter_config.json": SHA, f"{name}/adapter_model.safetensors": SHA}
    return {"name": name, "attribute": attribute, "pole": pole, "rank": 4, "lora_alpha": 8.0,
            "target_modules": ["q_proj"], "files": files, **overrides}


def manifest_dict(**overrides) -> dict:
    return {"base_model": BASE, "attributes": {"sentiment": {"high": "positive", "low": "negative"}},
            "anchors": [entry("sentiment.positive"), entry("sentiment.negative")], **overrides}


def test_manifest_json_round_trip_keeps_order_layout_and_roles():
    manifest = Manifest.model_validate(manifest_dict(training={"steps": 3}))
    again = Manifest.from_json(manifest.to_json(), "mem")
    assert again == manifest
    assert json.loads(manifest.to_json())["format_version"] == 1
    layout = manifest.layout()
    assert layout.anchors == ("sentiment.positive", "sentiment.negative")
    assert layout.attributes == {"sentiment": ("sentiment.negative", "sentiment.positive")}  # (low, high)
    assert [manifest.role(a) for a in manifest.anchors] == ["high", "low"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"anchors": [entry("sentiment.positive")]}, "no anchor for its pole 'negative'"),
        ({"anchors": [entry("sentiment.positive"), entry("sentiment.negative"), entry("sentiment.neutral")]},
         "not a pole of a declared"),
        ({"anchors": [entry("sentiment.positive"), entry("sentiment.negative"), entry("sentiment.negative")]},
         "unique"),
        ({"anchors": [entry("sentiment.positive", pole="negative"), entry("sentiment.negative")]}, "must be named"),
        ({"anchors": [entry("sentiment.positive", files={"sentiment.positive/adapter_config.json": SHA}),
                      entry("sentiment.negative")]}, "needs both files"),
        ({"anchors": [entry("sentiment.positive", files={"../adapter_config.json": SHA}),
                      entry("sentiment.negative")]}, "must be 'sentiment.positive/<file name>'"),
        ({"anchors": [entry("sentiment.positive", files={"sentiment.positive/adapter_config.json": "XYZ",
                                                         "sentiment.positive/adapter_model.safetensors": SHA}),
                      entry("sentiment.negative")]}, "sha256"),
        ({"base_model": {**BASE, "checksum": None}}, "revision or a checksum"),
        ({"attributes": {"sentiment": {"high": "positive", "low": "positive"}}}, "must differ"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_manifest_validation_rejects(change, message):
    with pytest.raises(ValueError, match=message):
        Manifest.model_validate(manifest_dict(**change))


def test_manifest_from_json_explains_newer_format_and_bad_content():
    newer = json.dumps({**manifest_dict(), "format_version": 7}).encode()
    with pytest.raises(AnchorSetError, match="format_version 7.*upgrade lerpray"):
        Manifest.from_json(newer, "s3://b/p")
    with pytest.raises(AnchorSetError, match="s3://b/p.*invalid"):
        Manifest.from_json(json.dumps({"anchors": []}).encode(), "s3://b/p")


def test_check_compatible_names_the_differing_field():
    manifest = Manifest.model_validate(manifest_dict())
    check_compatible(manifest, BaseModelIdentity(**{**BASE, "name": "/local/copy"}))  # names may differ
    with pytest.raises(AnchorSetError, match="built for base model 'tiny'.*hidden_size: set 32, given 64"):
        check_compatible(manifest, BaseModelIdentity(**{**BASE, "hidden_size": 64}))


# -- PEFT keys -----------------------------------------------------------------------------------------------------

def adapter(config: dict, ranks: dict[str, int], d_in: int = 8, d_out: int = 6) -> tuple[bytes, bytes]:
    """Config JSON + safetensors bytes of a hand-made adapter: module path -> rank."""
    full = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": False, "bias": "none",
            "rank_pattern": {}, "alpha_pattern": {}, **config}
    tensors = {}
    for module, r in ranks.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(r, d_in)  # [r, d_in]
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(d_out, r)  # [d_out, r]
    return json.dumps(full).encode(), save(tensors)


def test_parse_adapter_keys_and_scale():
    config, modules = parse_adapter(*adapter({}, {"model.layers.0.self_attn.q_proj": 4}), "mem")
    assert config["r"] == 4
    A, B, scale = modules["model.layers.0.self_attn.q_proj"]
    assert A.shape == (4, 8) and B.shape == (6, 4) and scale == 2.0  # 8 / 4


def test_parse_adapter_rslora_divides_by_sqrt_rank():
    _, modules = parse_adapter(*adapter({"use_rslora": True}, {"m.q_proj": 4}), "mem")
    assert modules["m.q_proj"][2] == 4.0  # 8 / sqrt(4)


def test_rank_and_alpha_patterns_match_by_suffix_like_peft():
    config = {"rank_pattern": {"q_proj": 2, "layers.1.self_attn.v_proj": 6}, "alpha_pattern": {"o_proj": 3.0}}
    ranks = {"model.layers.0.self_attn.q_proj": 2, "model.layers.1.self_attn.q_proj": 2,
             "model.layers.0.self_attn.v_proj": 4, "model.layers.1.self_attn.v_proj": 6,
             "model.layers.0.self_attn.o_proj": 4}
    _, modules = parse_adapter(*adapter(config, ranks), "mem")
    scales = {m.split("model.layers.")[1]: s for m, (_, _, s) in modules.items()}
    assert scales == {"0.self_attn.q_proj": 4.0, "1.self_attn.q_proj": 4.0, "0.self_attn.v_proj": 2.0,
                      "1.self_attn.v_proj": pytest.approx(8 / 6), "0.self_attn.o_proj": 0.75}


def test_pattern_key_matches_whole_dotted_suffixes_only():
    assert pattern_key({"q_proj": 2}, "model.layers.0.self_attn.q_proj") == "q_proj"
    assert pattern_key({"proj": 2}, "model.layers.0.self_attn.q_proj") is None
    assert pattern_key({"q_proj": 2}, "model.layers.0.mlp.xq_proj") is None
    assert pattern_key({"layers.1.mlp": 2, "mlp.up_proj": 3}, "model.layers.1.mlp.up_proj") == "mlp.up_proj"


def test_rank_that_disagrees_with_config_is_refused():
    with pytest.raises(AnchorSetError, match=r"r=2 \(config r / rank_pattern\)"):
        parse_adapter(*adapter({"rank_pattern": {"q_proj": 2}}, {"m.q_proj": 4}), "mem")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"use_dora": True}, "use_dora=True not supported"),
        ({"bias": "all"}, "bias='all' not supported"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"lora_bias": True}, "lora_bias"),
        ({"peft_type": "IA3"}, "peft_type 'IA3' is not supported; lerpray reads plain LoRA"),
    ],
)
def test_unsupported_adapters_are_refused_with_what_is_supported(config, message):
    with pytest.raises(AnchorSetError, match=message):
        parse_adapter(*adapter(config, {"m.q_proj": 4}), "mem")


def test_unexpected_tensors_and_unreadable_bytes_are_refused():
    config_json, _ = adapter({}, {})
    embedding = save({"base_model.model.embed_tokens.lora_embedding_A": torch.zeros(4, 8)})
    with pytest.raises(AnchorSetError, match="unexpected tensor.*lora_embedding_A"):
        parse_adapter(config_json, embedding, "mem")
    only_a = save({"base_model.model.m.q_proj.lora_A.weight": torch.zeros(4, 8)})
    with pytest.raises(AnchorSetError, match="needs lora_A"):
        parse_adapter(config_json, only_a, "mem")
    with pytest.raises(AnchorSetError, match="unreadable adapter"):
        parse_adapter(config_json, b"not safetensors", "mem")


# -- poles ---------------------------------------------------------------------------------------------------------

def test_default_poles_known_pairs_then_alphabetical():
    assert default_poles("negative", "positive") == AttributePoles(high="positive", low="negative")
    assert default_poles("informal", "formal") == AttributePoles(high="formal", low="informal")
    assert default_poles("zesty", "bland") == AttributePoles(high="bland", low="zesty")


def test_plan_attributes_checks_names_and_pole_counts():
    explicit = {"tone": AttributePoles(high="warm", low="cold")}
    assert plan_attributes(["tone.cold", "tone.warm"], explicit) == explicit
    with pytest.raises(AnchorSetError, match="exactly two anchors"):
        plan_attributes(["tone.warm", "tone.cold", "tone.hot"], None)
    with pytest.raises(AnchorSetError, match="must be 'attribute.pole'"):
        plan_attributes(["tone"], None)
    with pytest.raises(AnchorSetError, match="do not match"):
        plan_attributes(["tone.cold", "tone.warm"], {"tone": AttributePoles(high="hot", low="cold")})


# -- store keys ----------------------------------------------------------------------------------------------------

BAD_KEYS = ["", "../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "..\\x", "a/", ".", "x\x00y"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected_by_every_store(key, tmp_path):
    with pytest.raises(StoreError):
        check_key(key)
    store = LocalStore(tmp_path / "root")
    with pytest.raises(StoreError):
        store.write_bytes(key, b"x")
    with pytest.raises(StoreError):
        store.read_bytes(key)
    s3 = S3Store("bucket", "p", client=object())  # no client methods: any request would fail differently
    for op in (s3.read_bytes, s3.exists, s3.list, s3.delete_prefix, lambda k: s3.write_bytes(k, b"x")):
        if key == "" and op in (s3.list, s3.delete_prefix):
            continue  # "" is the store root for prefix operations
        with pytest.raises(StoreError):
            op(key)
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


def test_local_store_refuses_symlink_escape(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(StoreError, match="outside the store root"):
        LocalStore(root).read_bytes("link/secret")


def test_local_store_ops_use_whole_segments(tmp_path):
    store = LocalStore(tmp_path)
    for key in ("a/x", "a/y/z", "ab/x", "a.json"):
        store.write_bytes(key, key.encode())
    assert store.list("a") == ["a/x", "a/y/z"]
    assert store.list() == ["a.json", "a/x", "a/y/z", "ab/x"]
    store.delete_prefix("a")
    assert store.list() == ["a.json", "ab/x"] and not (tmp_path / "a").exists()
    assert store.read_bytes("ab/x") == b"ab/x"
    with pytest.raises(ObjectNotFound):
        store.read_bytes("a/x")


def test_open_store_dispatches_on_scheme(tmp_path):
    s3 = open_store("s3://my-bucket/sets/sentiment/", endpoint_url="http://127.0.0.1:1")
    assert (s3.bucket, s3.prefix, s3.uri) == ("my-bucket", "sets/sentiment", "s3://my-bucket/sets/sentiment")
    assert open_store(f"file://{tmp_path}").root == tmp_path
    assert open_store(str(tmp_path)).root == tmp_path
    with pytest.raises(StoreError, match="unsupported store URI"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="invalid S3 bucket name"):
        open_store("s3://Bad_Bucket/x")
    with pytest.raises(StoreError):
        open_store("s3://bucket/a/../b")


def test_cli_pairs_are_checked():
    from lerpray.anchors.commands import parse_pairs

    assert parse_pairs(["a.b=/x=y"], "--anchor") == {"a.b": "/x=y"}
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_pairs(["a.b"], "--anchor")
    with pytest.raises(ValueError, match="given twice"):
        parse_pairs(["a=1", "a=2"], "--high")


def test_lora_scale_reference_values():
    # The published numbers the serving math relies on (PEFT LoraLayer.update_layer).
    _, modules = parse_adapter(*adapter({"r": 8, "lora_alpha": 16, "use_rslora": True}, {"m.v_proj": 8}), "mem")
    assert modules["m.v_proj"][2] == pytest.approx(16 / math.sqrt(8))

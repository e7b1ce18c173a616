"""The KV-cache budget and context length in configs: sizes parsed exactly, bad values refused with the fix named,
Serve args and batch resources handing them to load_engine, the serve CLI writing its flags into the app's args."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lerpray.batch.config import BatchConfigError, parse_batch_config
from lerpray.kv_config import format_bytes, parse_bytes
from lerpray.serve.commands import serve_config
from lerpray.serve.config import ServeArgs

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("value", "expected"), [
    (1, 1), (4096, 4096), ("4096", 4096), ("2GiB", 2 * 2**30), ("2 GiB", 2 * 2**30), ("512mib", 512 * 2**20),
    ("1.5GiB", 3 * 2**29), ("1.5GB", 1_500_000_000), ("64KiB", 65536), ("10 KB", 10_000), ("7B", 7), ("1TiB", 2**40),
])  # fmt: skip
def test_parse_bytes(value, expected):
    assert parse_bytes(value) == expected


@pytest.mark.parametrize("value", ["2G", "two GiB", "-1", "0", 0, -5, "0.1B", "", "1e9", True, 1.5])
def test_parse_bytes_refuses(value):
    with pytest.raises(ValueError, match="must be"):
        parse_bytes(value)


def test_format_bytes():
    assert [format_bytes(n) for n in (512, 2048, 3 * 2**29, 2**40)] == ["512 B", "2 KiB", "1.5 GiB", "1 TiB"]


def args(**kw) -> ServeArgs:
    return ServeArgs.model_validate({"anchors": "/sets/a", **kw})


def test_serve_args_take_a_size_and_hand_it_to_the_engine():
    served = args(kv_cache_bytes="2GiB", context_length=4096)
    assert served.kv_cache_bytes == 2 * 2**30
    assert served.kv_engine_kwargs() == {"kv_cache_bytes": 2 * 2**30, "context_length": 4096}
    assert args().kv_engine_kwargs() == {}
    assert args(device="cuda", kv_cache_fraction=0.5).kv_engine_kwargs() == {"kv_cache_fraction": 0.5}
    # the replica receives the args as Serve hands them over: a dump validates back to the same args
    assert ServeArgs.model_validate(served.model_dump()) == served


@pytest.mark.parametrize(("kw", "message"), [
    ({"kv_cache_bytes": "2 gigs"}, 'kv_cache_bytes\n.*"2GiB"'),
    ({"kv_cache_bytes": 0}, "kv_cache_bytes\n.*at least 1 byte"),
    ({"kv_cache_fraction": 0, "device": "cuda"}, "kv_cache_fraction\n.*greater than 0"),
    ({"kv_cache_fraction": 1.2, "device": "cuda"}, "kv_cache_fraction\n.*less than or equal to 1"),
    ({"kv_cache_fraction": 0.5}, "does not apply on cpu; remove it or set kv_cache_bytes"),
    ({"kv_cache_bytes": "1GiB", "kv_cache_fraction": 0.5, "device": "cuda:0"}, "both set; set one"),
    ({"context_length": 0}, "context_length\n.*greater than or equal to 1"),
    ({"context_length": 128}, r"context_length \(128\) leaves no room for a prompt with default_max_tokens \(128\)"),
    ({"kv_cache_size": "1GiB"}, "kv_cache_size\n.*Extra inputs are not permitted"),
])  # fmt: skip
def test_serve_args_refuse(kw, message):
    with pytest.raises(ValidationError, match=message):
        args(**kw)


def batch(resources: dict, max_tokens: int = 32) -> dict:
    return {"anchors": "/sets/a", "input": {"paths": ["/in/p.jsonl"]}, "output": {"path": "/out"},
            "sampling": {"max_tokens": max_tokens}, "resources": resources}


def test_batch_resources_take_the_budget():
    config = parse_batch_config(batch({"kv_cache_bytes": "256MiB", "context_length": 512}))
    assert config.resources.kv_engine_kwargs() == {"kv_cache_bytes": 256 * 2**20, "context_length": 512}
    gpu = parse_batch_config(batch({"num_gpus_per_actor": 1, "kv_cache_fraction": 0.5}))
    assert gpu.resources.kv_engine_kwargs() == {"kv_cache_fraction": 0.5}


def test_batch_actors_get_the_budget():
    from lerpray.batch.pipeline import _actor_kwargs

    config = parse_batch_config(batch({"kv_cache_bytes": "1MiB", "context_length": 64}))
    engine = _actor_kwargs(config, lambda **kw: None, {})["engine_kwargs"]
    assert (engine["kv_cache_bytes"], engine["context_length"], engine["max_batch_size"]) == (2**20, 64, 16)
    assert "kv_cache_fraction" not in engine


@pytest.mark.parametrize(("resources", "message"), [
    ({"kv_cache_fraction": 0.5}, "resources.kv_cache_fraction is a share of free CUDA memory and does not apply on "
                                 r"the CPU \(resources.num_gpus_per_actor is 0\)"),
    ({"context_length": 32}, r"resources.context_length \(32\) leaves no room .* sampling.max_tokens \(32\)"),
    ({"kv_cache_bytes": "lots"}, "resources.kv_cache_bytes: .*must be"),
    ({"kv_cache_bytes": 1, "kv_cache_fraction": 0.1, "num_gpus_per_actor": 1}, "both set"),
])  # fmt: skip
def test_batch_resources_refuse(resources, message):
    with pytest.raises(BatchConfigError, match=message):
        parse_batch_config(batch(resources))


def test_serve_cli_flags_replace_the_configs_budget():
    config = {"applications": [{"name": "lerpray", "route_prefix": "/", "import_path": "lerpray.serve.app:build_app",
                                "args": {"anchors": "/sets/a", "device": "cuda", "kv_cache_fraction": 0.9}}]}
    merged = serve_config(config, anchors=None, host=None, port=None,
                          engine={"kv_cache_bytes": "1GiB", "context_length": 2048})
    app_args = merged["applications"][0]["args"]
    assert "kv_cache_fraction" not in app_args
    assert (app_args["kv_cache_bytes"], app_args["context_length"]) == ("1GiB", 2048)
    kept = serve_config(config, anchors=None, host=None, port=None, engine={"context_length": 2048})
    assert kept["applications"][0]["args"]["kv_cache_fraction"] == 0.9
    with pytest.raises(ValidationError, match="kv_cache_bytes"):
        serve_config(None, anchors="/sets/a", host=None, port=None, engine={"kv_cache_bytes": "1 G"})

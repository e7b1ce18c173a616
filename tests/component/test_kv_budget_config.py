"""A KV-cache budget from the configs reaches the engine: load_engine (as the batch actors and the serving replicas
call it) caps the context at what the budget fits, the replica's /v1/models card and startup log say so, and a
request past it is refused with the budget named. In-process, no Ray: the tiny set saved on disk."""

from __future__ import annotations

import logging

import pytest
from engine_helpers import ONE, req

from lerpray.model import EngineError, PromptTooLongError
from lerpray.model.kv_budget import KVCacheFullError
from lerpray.model.loading import load_engine
from lerpray.serve.config import ServeArgs
from lerpray.serve.live import describe_capacity, kv_capacity, model_cards, serve_engine

pytestmark = pytest.mark.component

# the tiny Llama: 2 layers x (keys + values) x 2 KV heads x head size 8 x 4 bytes (float32)
PER_TOKEN = 2 * 2 * 2 * 8 * 4
SLOTS = 3


@pytest.fixture(scope="module")
def saved_set(tmp_path_factory) -> str:
    from lerpray.testing import tiny_anchor_set

    return str(tiny_anchor_set(tmp_path_factory.mktemp("kv-budget")))


def test_load_engine_caps_the_context_at_the_budget(saved_set):
    budget = PER_TOKEN * (SLOTS + 1) * 64  # 64 tokens in each of 3 slots and the scratch slot: 64 KiB
    engine = load_engine(saved_set, max_batch_size=SLOTS, kv_cache_bytes=budget)
    assert (engine.context_length, engine.model_context, engine.max_batch_size) == (64, 512, SLOTS)
    assert engine.kv_cache_nbytes == budget  # allocated at start-up, before any request
    with pytest.raises(KVCacheFullError, match="holds 64 tokens per slot .3 slots in its memory budget") as err:
        engine.add(req("x" * 60, ONE, max_tokens=8))
    assert isinstance(err.value, PromptTooLongError)  # serving answers 400 context_length_exceeded
    assert "at most 56 fit" in str(err.value) and "lower max_tokens" in str(err.value)
    assert engine.generate([req("x" * 40, ONE, max_tokens=8)])[0].completion_tokens == 8  # 49 tokens fit 64


def test_a_context_length_below_the_budget_is_kept(saved_set):
    engine = load_engine(saved_set, max_batch_size=SLOTS, kv_cache_bytes=2**20, context_length=48)
    assert (engine.context_length, engine.model_context) == (48, 48)
    assert engine.kv_cache_nbytes == PER_TOKEN * (SLOTS + 1) * 48
    with pytest.raises(PromptTooLongError, match="context length 48") as err:
        engine.add(req("x" * 45, ONE, max_tokens=8))
    assert not isinstance(err.value, KVCacheFullError)  # the wanted context, not the budget, refused it


def test_a_context_past_the_models_positions_or_a_tiny_budget_is_refused(saved_set):
    with pytest.raises(EngineError, match="context_length must be between 1 and the model's 512 positions"):
        load_engine(saved_set, max_batch_size=SLOTS, context_length=513)
    with pytest.raises(EngineError, match="raise kv_cache_bytes .or kv_cache_fraction. or lower max_batch_size"):
        load_engine(saved_set, max_batch_size=SLOTS, kv_cache_bytes=PER_TOKEN * (SLOTS + 1) * 4)


def test_the_serve_config_budget_reaches_the_replicas_engine_card_and_log(saved_set, caplog):
    args = ServeArgs.model_validate({"anchors": saved_set, "max_batch_size": SLOTS, "kv_cache_bytes": "64KiB",
                                     "default_max_tokens": 16, "max_tokens_cap": 32})
    engine = serve_engine(args)
    assert engine.context_length == 64  # 64 KiB / (256 bytes x 4 slots)
    capacity = kv_capacity(engine)
    assert capacity == {"slots": SLOTS, "tokens_per_slot": 64, "model_context": 512, "bytes": 65536}
    assert describe_capacity(capacity) == "KV cache 3 slots x 64 tokens (context 64 of 512 wanted, 64 KiB)"
    card = model_cards(args, engine.layout, engine.context_length, capacity)[0].model_dump()
    assert (card["context_length"], card["kv_cache"]) == (64, capacity)
    assert kv_capacity(object()) is None  # a test's stand-in engine: no card entry, the log says so

    from lerpray.serve.live import start_set

    with caplog.at_level(logging.INFO, logger="lerpray.serve.live"):
        live = start_set(args, lambda a: engine, observer=None)
    try:
        assert "lerpray loaded from" in caplog.text and "KV cache 3 slots x 64 tokens" in caplog.text
        assert live.cards[0].kv_cache == capacity
    finally:
        live.batcher.close()


def test_cli_generate_takes_the_budget(saved_set, capsys):
    from lerpray.cli import main

    # 16 KiB / (256 bytes x (1 slot + the scratch slot)) = 32 tokens
    small = ["generate", "--anchors", saved_set, "--kv-cache-bytes", "16KiB", "--temperature", "0", "--max-tokens"]
    assert main([*small, "4", "hi"]) == 0
    capsys.readouterr()
    assert main([*small, "8", "x" * 30]) == 2
    assert "holds 32 tokens per slot" in capsys.readouterr().err
    assert main(["generate", "--anchors", saved_set, "--context-length", "8", "--max-tokens", "8", "hi"]) == 2
    assert "context_length (8) leaves no room for a prompt with --max-tokens (8)" in capsys.readouterr().err
    assert main(["generate", "--anchors", saved_set, "--kv-cache-bytes", "2G", "hi"]) == 2
    assert 'kv_cache_bytes\n  Value error, must be an integer number of bytes or a size such as "2GiB"' in (
        capsys.readouterr().err)

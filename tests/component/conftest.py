"""Fixtures of the engine tests: the tiny interpolated Llama loaded the way serving loads it, engines, a spy."""

from __future__ import annotations

import pytest
from engine_helpers import printable_only

from lerpray.model import Engine
from lerpray.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def base_dir(tiny_llama_model, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-base")
    tiny_llama_model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def imodel(tiny_anchor_set, base_dir):
    """The real interpolated tiny Llama (conftest's four anchors), loaded the way serving loads it."""
    engine = Engine.from_uri(tiny_anchor_set, base_model=base_dir)
    assert engine.layout.anchors == ("sentiment.positive", "sentiment.negative", "formality.formal",
                                     "formality.informal")
    engine.model.lm_head.register_forward_hook(printable_only)
    return engine.imodel


@pytest.fixture
def engine(imodel):
    return Engine(imodel, tiny_tokenizer(), max_batch_size=8)


@pytest.fixture
def spy(imodel, monkeypatch):
    """Records the shape of every coefficient binding (one per forward) and counts merged() uses."""
    calls = {"shapes": [], "merged": 0}
    bind_coeffs, merged = imodel.bind_coeffs, imodel.merged

    def spy_set(coeffs, host=None):
        calls["shapes"].append(tuple(coeffs.shape))
        bind_coeffs(coeffs, host)

    def spy_merged(coeffs):
        calls["merged"] += 1
        return merged(coeffs)

    monkeypatch.setattr(imodel, "bind_coeffs", spy_set)
    monkeypatch.setattr(imodel, "merged", spy_merged)
    return calls

"""Cosine similarity between anchors' updates delta_k = s_k B_k A_k, computed through rank-sized traces, checked
against the dense d_out x d_in updates; identical anchors give 1, negated ones -1, per layer and overall."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lerpray.eval.weights import cosine_from_gram, layer_of, update_gram, weight_similarity

pytestmark = pytest.mark.unit

MODULES = {"model.layers.0.self_attn.q_proj": (24, 16), "model.layers.0.mlp.up_proj": (40, 16),
           "model.layers.1.self_attn.q_proj": (24, 16)}  # path -> (d_out, d_in)  # fmt: skip


def _factors(seed: int, r: int, scale: float, modules=MODULES) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {m: (torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g), scale)
            for m, (d_out, d_in) in modules.items()}  # fmt: skip


def _anchor_set(anchors: dict[str, dict]):
    """What weight_similarity reads from an AnchorSet: anchors[i].entry.name and anchors[i].modules."""
    return SimpleNamespace(
        anchors=[SimpleNamespace(entry=SimpleNamespace(name=n), modules=m) for n, m in anchors.items()]
    )


def _dense(modules: dict, selected) -> torch.Tensor:
    """One anchor's updates s B A of the selected modules, flattened and concatenated (zeros where absent)."""
    parts = []
    for path in selected:
        d_out, d_in = MODULES[path]
        if path in modules:
            a, b, s = modules[path]
            parts.append((s * b.double() @ a.double()).flatten())
        else:
            parts.append(torch.zeros(d_out * d_in, dtype=torch.float64))
    return torch.cat(parts)


def _dense_cos(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(x @ y / (x.norm() * y.norm()))


def test_identical_anchors_give_one_and_negated_give_minus_one():
    base = _factors(0, r=4, scale=2.0)
    negated = {m: (a, -b, s) for m, (a, b, s) in base.items()}
    refactored = {m: (2 * a, b, s / 2) for m, (a, b, s) in base.items()}  # same update, other factors
    sim = weight_similarity(_anchor_set({"x.hi": base, "x.lo": negated, "y.hi": refactored}))
    assert sim.overall[0, 1] == pytest.approx(-1.0) and sim.overall[0, 2] == pytest.approx(1.0)
    for layer in ("0", "1"):
        assert sim.per_layer[layer][0, 1] == pytest.approx(-1.0) and sim.per_layer[layer][0, 2] == pytest.approx(1.0)
    assert np.diag(sim.overall) == pytest.approx(np.ones(3))


def test_matches_dense_computation_with_unequal_ranks_scales_and_coverage():
    only_layer0 = {m: v for m, v in MODULES.items() if ".0." in m}
    anchors = {"a.hi": _factors(1, r=4, scale=2.0), "a.lo": _factors(2, r=2, scale=0.5),
               "b.hi": _factors(3, r=3, scale=1.5, modules=only_layer0)}  # fmt: skip
    sim = weight_similarity(_anchor_set(anchors))
    dense = {n: _dense(m, list(MODULES)) for n, m in anchors.items()}
    names = list(anchors)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert sim.overall[i, j] == pytest.approx(_dense_cos(dense[names[i]], dense[names[j]]), abs=1e-9)
    layer0 = [m for m in MODULES if ".0." in m]
    expected = _dense_cos(_dense(anchors["a.hi"], layer0), _dense(anchors["b.hi"], layer0))
    assert sim.per_layer["0"][0, 2] == pytest.approx(expected, abs=1e-9)
    assert math.isnan(sim.per_layer["1"][0, 2])  # b.hi does not adapt layer 1: no direction to compare
    assert sim.norms["a.lo"] == pytest.approx(float(dense["a.lo"].norm()), rel=1e-9)
    module = "model.layers.0.mlp.up_proj"
    gram = update_gram([anchors[n].get(module) for n in names])
    flat = torch.stack([_dense(anchors[n], [module]) for n in names])  # [K, d_out * d_in]
    assert gram == pytest.approx((flat @ flat.T).numpy(), rel=1e-9)


def test_helpers():
    assert layer_of("model.layers.12.self_attn.q_proj") == "12"
    assert layer_of("transformer.h.3.attn.c_attn") == "3"
    assert layer_of("lm_head") == "other"
    cos = cosine_from_gram(np.array([[4.0, -2.0, 0.0], [-2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert cos[0, 1] == pytest.approx(-1.0) and math.isnan(cos[0, 2]) and math.isnan(cos[2, 2])

"""lora_math against its loop-form references: random shapes, mixed ranks, absent anchors, shape errors."""

from __future__ import annotations

import math

import pytest
import torch

from lerpray.lora_math import (
    CoeffsShapeError,
    active_anchors,
    column_weights,
    expand_add_,
    gather_anchors,
    lora_scale,
    merged_delta,
    shrink,
    stack_factors,
    stacked_delta,
)
from lerpray.testing import reference_delta, reference_merged_delta

pytestmark = pytest.mark.unit


def _factors(ranks, d_in, d_out, seed=0):
    """Random factors per anchor; rank None = the anchor does not adapt this layer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, r in enumerate(ranks):
        if r is None:
            out.append(None)
        else:
            scale = 0.5 + k  # distinct per anchor so a swapped owner would show
            out.append((torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g), scale))
    return out


def test_lora_scale_plain_and_rslora():
    assert lora_scale(16, 4, use_rslora=False) == 4.0
    assert lora_scale(16, 4, use_rslora=True) == 8.0
    assert lora_scale(3, 9, use_rslora=True) == pytest.approx(3 / math.sqrt(9))
    with pytest.raises(CoeffsShapeError, match="rank must be positive"):
        lora_scale(8, 0, use_rslora=False)


@pytest.mark.parametrize(
    "ranks, d_in, d_out, n, t",
    [((2, 4, 8), 16, 24, 3, 5), ((1,), 7, 3, 1, 1), ((8, 8), 32, 32, 4, 2), ((3, None, 5, None), 12, 6, 2, 3)],
)
def test_stacked_equals_loop_reference(ranks, d_in, d_out, n, t):
    factors = _factors(ranks, d_in, d_out)
    stacked = stack_factors(factors)
    x = torch.randn(n, t, d_in, dtype=torch.float64).float()
    coeffs = torch.randn(n, len(ranks))
    got = stacked_delta(x, coeffs, stacked)
    assert got.shape == (n, t, d_out)
    torch.testing.assert_close(got.double(), reference_delta(x, coeffs, factors), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("ranks", [(2, 4, 8), (3, None, 5, None)])
def test_in_place_serving_form_adds_the_reference_delta_to_the_base_output(ranks):
    factors = _factors(ranks, 12, 6, seed=3)
    stacked = stack_factors(factors)
    x = torch.randn(3, 4, 12)
    coeffs = torch.randn(3, len(ranks))
    base = torch.randn(3, 4, 6)
    got = expand_add_(base.clone(), shrink(x, stacked.A_cat, column_weights(coeffs, stacked)), stacked.B_cat)
    want = base.double() + reference_delta(x, coeffs, factors)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_each_row_uses_its_own_mix():
    factors = _factors((2, 3), 8, 5)
    stacked = stack_factors(factors)
    x = torch.randn(1, 4, 8).expand(3, 4, 8)  # the same input on every row
    coeffs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, -2.0]])
    got = stacked_delta(x, coeffs, stacked)
    for n in range(3):
        alone = stacked_delta(x[n : n + 1], coeffs[n : n + 1], stacked)
        torch.testing.assert_close(got[n : n + 1], alone)
    assert not torch.allclose(got[0], got[1])


def test_merged_delta_times_x_equals_stacked_delta():
    factors = _factors((2, 4, None, 8), 16, 12, seed=3)
    stacked = stack_factors(factors)
    c = torch.tensor([0.7, -0.4, 5.0, 1.3])
    x = torch.randn(2, 3, 16)
    delta_w = merged_delta(c, stacked)  # [d_out, d_in]
    assert delta_w.shape == (12, 16) and delta_w.dtype == torch.float32
    torch.testing.assert_close(delta_w.double(), reference_merged_delta(c, factors), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x @ delta_w.T, stacked_delta(x, c.expand(2, 4), stacked), rtol=1e-5, atol=1e-4)


def test_absent_anchor_contributes_nothing_whatever_its_coefficient():
    factors = _factors((2, None, 3), 6, 4)
    stacked = stack_factors(factors)
    assert stacked.A_cat.shape == (5, 6) and stacked.B_cat.shape == (4, 5)
    assert stacked.owner.tolist() == [0, 0, 2, 2, 2]
    x = torch.randn(1, 2, 6)
    a = stacked_delta(x, torch.tensor([[1.0, 0.0, 2.0]]), stacked)
    b = stacked_delta(x, torch.tensor([[1.0, 1e6, 2.0]]), stacked)
    torch.testing.assert_close(a, b)
    assert stack_factors([None, None]) is None


def test_column_weights_repeat_coefficient_times_scale_per_rank_column():
    factors = _factors((1, 2), 3, 3)  # scales 0.5 and 1.5
    cols = column_weights(torch.tensor([[2.0, -1.0]]), stack_factors(factors))
    torch.testing.assert_close(cols, torch.tensor([[1.0, -1.5, -1.5]]))


def test_row_count_mismatch_is_a_clear_error():
    stacked = stack_factors(_factors((2, 2), 4, 4))
    with pytest.raises(CoeffsShapeError, match="coefficients have 3 rows but the batch has 2"):
        stacked_delta(torch.randn(2, 1, 4), torch.zeros(3, 2), stacked)


def test_wrong_anchor_count_and_bad_factor_shapes_are_errors():
    stacked = stack_factors(_factors((2, 2), 4, 4))
    with pytest.raises(CoeffsShapeError, match=r"shape \[N, 2\]"):
        stacked_delta(torch.randn(1, 1, 4), torch.zeros(1, 3), stacked)
    with pytest.raises(CoeffsShapeError, match=r"shape \[K\]"):
        merged_delta(torch.zeros(1, 2), stacked)
    bad = [(torch.randn(2, 4), torch.randn(4, 2), 1.0), (torch.randn(2, 5), torch.randn(4, 2), 1.0)]
    with pytest.raises(CoeffsShapeError, match="anchor 1"):
        stack_factors(bad)


def test_bf16_inputs_stay_bf16_and_close_to_fp32():
    factors = _factors((4, 4), 16, 16)
    stacked32 = stack_factors(factors)
    stacked16 = stack_factors([(a.bfloat16(), b.bfloat16(), s) for a, b, s in factors])
    x, c = torch.randn(2, 3, 16), torch.randn(2, 2)
    got = stacked_delta(x.bfloat16(), c, stacked16)
    assert got.dtype == torch.bfloat16
    want = stacked_delta(x, c, stacked32)
    torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2 * want.abs().max().item())


def test_active_anchors_are_the_columns_some_row_uses():
    coeffs = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -2.0, 0.0], [0.0, 0.5, 0.0, 0.0, 0.0]])
    assert active_anchors(coeffs) == [1, 3]
    assert active_anchors(torch.zeros(2, 3)) == []
    with pytest.raises(CoeffsShapeError, match=r"\[N, K\]"):
        active_anchors(torch.zeros(3))


@pytest.mark.parametrize("ranks", [(2, 4, 8, 1, 3), (3, None, 5, None, 2)])
def test_gathered_active_anchors_equal_the_full_stacked_path_and_the_loop(ranks):
    """Rows with disjoint active subsets; the union's columns alone give every row's full sum."""
    factors = _factors(ranks, 12, 10)
    stacked = stack_factors(factors)
    coeffs = torch.tensor([[0.7, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.5, -0.4, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    x = torch.randn(3, 4, 12)
    anchors = active_anchors(coeffs)
    gathered = gather_anchors(stacked, anchors)
    kept = sum(r for k, r in enumerate(ranks) if r is not None and k in anchors)
    assert gathered.A_cat.shape == (kept, 12) and gathered.B_cat.shape == (10, kept)
    assert set(gathered.owner.tolist()) <= set(anchors)
    got = stacked_delta(x, coeffs, gathered)
    torch.testing.assert_close(got, stacked_delta(x, coeffs, stacked), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.double(), reference_delta(x, coeffs, factors), rtol=1e-5, atol=1e-4)


def test_gathered_columns_are_bit_equal_to_a_layer_holding_only_those_anchors():
    """A zero-coefficient anchor changes nothing: gathering drops its columns, leaving the smaller layer exactly."""
    factors = _factors((2, 4, 8, 4), 16, 8)
    coeffs = torch.tensor([[0.0, 0.3, 0.0, -1.2], [0.0, 2.0, 0.0, 0.5]])
    x = torch.randn(2, 3, 16)
    small = stacked_delta(x, coeffs[:, [1, 3]], stack_factors([factors[1], factors[3]]))
    assert torch.equal(stacked_delta(x, coeffs, gather_anchors(stack_factors(factors), active_anchors(coeffs))), small)


def test_capacity_pads_with_zero_columns_that_change_nothing():
    factors = _factors((2, 4, 8), 16, 8)
    stacked = stack_factors(factors)
    coeffs = torch.tensor([[0.0, 1.0, 0.0], [0.0, -0.5, 0.0]])
    padded = gather_anchors(stacked, [1], capacity=10)
    assert padded.A_cat.shape == (10, 16) and padded.B_cat.shape == (8, 10)
    assert padded.col_scale[4:].eq(0).all() and padded.A_cat[4:].eq(0).all()
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(stacked_delta(x, coeffs, padded), stacked_delta(x, coeffs, stacked), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(CoeffsShapeError, match="raise the capacity"):
        gather_anchors(stacked, [1, 2], capacity=10)
    with pytest.raises(CoeffsShapeError, match="outside"):
        gather_anchors(stacked, [3])

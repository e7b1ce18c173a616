"""Cost by active anchors: each forward runs only the rank columns of the anchors its rows use, and that changes
nothing but the cost. Six random anchors on a tiny Llama (fp32), mixed ranks and target sets (grouped q/k/v and
gate/up included). References: PEFT's `cat` per row over the row's own anchors, the model holding only the active
anchors (bit-equal), the full stacked path (gather_active=False) and the base model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft_reference import peft_cat_logits

from lerpray.model import interpolate
from lerpray.testing import anchor_set_from_adapters, random_adapter, tiny_llama

pytestmark = pytest.mark.component

ATOL = 1e-5
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
ANCHORS = {  # name -> random_adapter kwargs
    "tone.warm": {"r": 2, "lora_alpha": 8, "target_modules": ATTN, "seed": 11},
    "tone.cold": {"r": 4, "lora_alpha": 4, "target_modules": ("q_proj", "v_proj"), "use_rslora": True, "seed": 12},
    "length.long": {"r": 8, "lora_alpha": 16, "target_modules": ATTN + MLP, "seed": 13},
    "length.short": {"r": 4, "lora_alpha": 2, "target_modules": ("o_proj", "down_proj"), "seed": 14},
    "topic.sport": {"r": 4, "lora_alpha": 8, "target_modules": ("gate_proj", "up_proj"), "seed": 15},
    "topic.art": {"r": 2, "lora_alpha": 4, "target_modules": ("k_proj", "up_proj"), "seed": 16},
}
NAMES = list(ANCHORS)
DISJOINT = torch.tensor(
    [
        [0.8, -0.3, 0.0, 0.0, 0.0, 0.0],  # anchors {0, 1}
        [0.0, 0.0, 1.2, 0.4, 0.0, 0.0],  # anchors {2, 3}
        [0.0, 0.0, 0.0, 0.0, -0.6, 1.1],  # anchors {4, 5}
        [0.5, 0.0, 0.0, 0.0, 0.0, 0.9],  # anchors {0, 5}
    ]
)  # [N, K]


@pytest.fixture(scope="module")
def base():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def folders(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("active")
    return {name: random_adapter(base, root / name, **kw) for name, kw in ANCHORS.items()}


@pytest.fixture(scope="module")
def imodel(base, folders):
    return interpolate(copy.deepcopy(base), anchor_set_from_adapters(base, folders))


@pytest.fixture(scope="module")
def input_ids():
    return torch.randint(3, 384, (len(DISJOINT), 6), generator=torch.Generator().manual_seed(1))  # [N, T]


def logits(imodel, coeffs, ids):
    imodel.set_coeffs(coeffs)
    with torch.no_grad():
        return imodel(ids).logits




@pytest.mark.parametrize("row", range(len(DISJOINT)))
def test_rows_with_disjoint_active_anchors_each_equal_peft_cat_of_their_own_anchors(base, folders, imodel,
                                                                                    input_ids, row):
    got = logits(imodel, DISJOINT, input_ids)
    anchors = torch.nonzero(DISJOINT[row]).flatten().tolist()
    want = peft_cat_logits(base, [folders[NAMES[k]] for k in anchors], DISJOINT[row, anchors].tolist(),
                           input_ids[row : row + 1])
    torch.testing.assert_close(got[row : row + 1], want, rtol=0, atol=ATOL)


def test_union_gather_equals_the_full_stacked_path(base, folders, imodel, input_ids):
    full = interpolate(copy.deepcopy(base), anchor_set_from_adapters(base, folders), gather_active=False)
    for coeffs in (DISJOINT, DISJOINT[:2], DISJOINT[[2]], torch.ones(1, len(NAMES))):
        ids = input_ids[: len(coeffs)]
        torch.testing.assert_close(logits(imodel, coeffs, ids), logits(full, coeffs, ids), rtol=0, atol=ATOL)
    assert all(layer.active is None for layer in full.layers.values())


def test_a_forward_runs_only_the_columns_of_the_anchors_its_rows_use(imodel, input_ids):
    ranks = [kw["r"] for kw in ANCHORS.values()]
    coeffs = DISJOINT[:2]  # anchors {0, 1, 2, 3}
    logits(imodel, coeffs, input_ids[:2])
    for path, layer in imodel.layers.items():
        module = path.rpartition(".")[2]
        want = sum(ranks[k] for k in range(4) if module in ANCHORS[NAMES[k]]["target_modules"])
        assert layer.factors().A_cat.shape[0] == want, path
        assert layer.A_cat.shape[0] == sum(r for r, kw in zip(ranks, ANCHORS.values(), strict=True)
                                           if module in kw["target_modules"])  # all anchors stay loaded
    logits(imodel, torch.ones(1, len(NAMES)), input_ids[:1])  # every anchor used: the layers' own buffers
    assert all(layer.active is None for layer in imodel.layers.values())


def test_a_zero_coefficient_anchor_changes_nothing(base, folders, imodel, input_ids):
    """Rows using anchors {2, 3} only, against a model that never loaded the other four: bit-equal."""
    small = interpolate(copy.deepcopy(base), anchor_set_from_adapters(
        base, {name: folders[name] for name in ("length.long", "length.short")}))
    coeffs = torch.tensor([[1.2, 0.4], [-0.7, 0.0], [0.3, 2.0]])
    padded = torch.zeros(3, len(NAMES))
    padded[:, 2:4] = coeffs
    assert torch.equal(logits(imodel, padded, input_ids[:3]), logits(small, coeffs, input_ids[:3]))


def test_all_zero_rows_skip_the_lora_work_and_are_the_base_model(base, imodel, input_ids):
    got = logits(imodel, torch.zeros(2, len(NAMES)), input_ids[:2])
    assert all(layer.factors().A_cat.shape[0] == 0 for layer in imodel.layers.values())
    with torch.no_grad():
        assert torch.equal(got, base(input_ids[:2]).logits)


def test_switching_active_sets_back_and_forth_gives_the_same_logits(imodel, input_ids):
    first = logits(imodel, DISJOINT, input_ids)
    for coeffs in (DISJOINT[[1]], torch.ones(2, len(NAMES)), DISJOINT[[0, 2]], torch.zeros(1, len(NAMES))):
        logits(imodel, coeffs, input_ids[: len(coeffs)])
    assert torch.equal(logits(imodel, DISJOINT, input_ids), first)


def test_pinned_buffers_serve_any_active_set_within_capacity_at_fixed_addresses(base, folders, input_ids):
    """What a captured CUDA graph runs (static_forwards: no host read of the coefficients, only the pinned
    buffers), refilled in place by prepare_active between "replays"."""
    anchor_set = anchor_set_from_adapters(base, folders)
    imodel = interpolate(copy.deepcopy(base), anchor_set)
    full = interpolate(copy.deepcopy(base), anchor_set, gather_active=False)
    imodel.pin_active(3)
    imodel._state.static_forwards = True
    addresses = None
    for coeffs in (DISJOINT[[0]], DISJOINT[[1]], DISJOINT[[0, 3]], DISJOINT[[2]], torch.zeros(1, len(NAMES))):
        assert imodel.prepare_active(coeffs)
        ids = input_ids[: len(coeffs)]
        torch.testing.assert_close(logits(imodel, coeffs, ids), logits(full, coeffs, ids), rtol=0, atol=ATOL)
        now = [t.data_ptr() for layer in imodel.layers.values() for t in (
            layer.factors().A_cat, layer.factors().B_cat, layer.factors().owner, layer.factors().col_scale)]
        assert addresses is None or now == addresses
        addresses = now
    assert not imodel.prepare_active(DISJOINT)  # 6 anchors in use, capacity 3: the caller runs this step eagerly
    imodel._state.static_forwards = False
    torch.testing.assert_close(logits(imodel, DISJOINT, input_ids), logits(full, DISJOINT, input_ids), rtol=0,
                               atol=ATOL)

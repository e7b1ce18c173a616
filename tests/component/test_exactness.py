"""The interpolated model is exactly PEFT's `cat` combination, row by row, and exactly the merged-weights model.

Four random non-zero anchors on a tiny Llama (fp32) with mixed ranks (2, 4, 8, 4), different lora_alpha, one
rsLoRA, and different target-module sets. One batch holds a different mix per row: one-hot, extrapolating (negative
weights), convex, and all-zero. References: PEFT's own add_weighted_adapter(..., combination_type="cat") per row,
PEFT with the single adapter loaded, the `merged()` fast path, and W0 + sum_k c_k s_k B_k A_k written by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft_reference import cat_mix_logits

from lerpray.model import interpolate
from lerpray.testing import anchor_set_from_adapters, random_adapter, reference_merged_delta, tiny_llama

pytestmark = pytest.mark.component

ATOL = 1e-5
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
ANCHORS = {  # name -> random_adapter kwargs
    "sentiment.positive": {"r": 2, "lora_alpha": 8, "target_modules": ATTN, "seed": 1},
    "sentiment.negative": {"r": 4, "lora_alpha": 4, "target_modules": ("q_proj", "v_proj"), "use_rslora": True,
                           "seed": 2},
    "formality.formal": {"r": 8, "lora_alpha": 16, "target_modules": ATTN + MLP, "seed": 3},
    "formality.casual": {"r": 4, "lora_alpha": 2, "target_modules": ("o_proj", "down_proj"), "seed": 4},
}
PEFT_NAMES = [f"a{k}" for k in range(len(ANCHORS))]
MIXES = torch.tensor(
    [
        [0.0, 1.0, 0.0, 0.0],  # one-hot (the rsLoRA anchor)
        [1.5, -0.5, -1.0, 2.0],  # extrapolating, negative weights
        [0.1, 0.2, 0.3, 0.4],  # convex
        [0.0, 0.0, 0.0, 0.0],  # the base model
    ]
)  # [N, K]


@pytest.fixture(scope="module")
def base():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def folders(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("anchors")
    return {name: random_adapter(base, root / name, **kw) for name, kw in ANCHORS.items()}


@pytest.fixture(scope="module")
def anchor_set(base, folders):
    return anchor_set_from_adapters(base, folders)


@pytest.fixture(scope="module")
def imodel(base, anchor_set):
    return interpolate(copy.deepcopy(base), anchor_set)


@pytest.fixture(scope="module")
def input_ids():
    return torch.randint(3, 384, (len(MIXES), 7), generator=torch.Generator().manual_seed(0))  # [N, T]


@pytest.fixture(scope="module")
def stacked_logits(imodel, input_ids):
    imodel.set_coeffs(MIXES)
    with torch.no_grad():
        return imodel(input_ids).logits  # [N, T, V]


@pytest.fixture(scope="module")
def peft_model(base, folders):
    from peft import PeftModel

    dirs = [str(folders[name]) for name in ANCHORS]  # PEFT adapter names cannot hold dots: a0, a1, ...
    model = PeftModel.from_pretrained(copy.deepcopy(base), dirs[0], adapter_name=PEFT_NAMES[0])
    for name, folder in zip(PEFT_NAMES[1:], dirs[1:], strict=True):
        model.load_adapter(folder, adapter_name=name)
    return model.eval()




def test_stacked_rows_have_distinct_mixes(stacked_logits):
    assert stacked_logits.shape == (len(MIXES), 7, 384)
    for n in range(1, len(MIXES)):
        assert not torch.allclose(stacked_logits[0], stacked_logits[n], atol=1e-3)


@pytest.mark.parametrize("row", range(len(MIXES) - 1))  # PEFT refuses an all-zero cat (no non-zero rows)
def test_each_row_equals_peft_cat_of_its_mix(peft_model, stacked_logits, input_ids, row):
    want = cat_mix_logits(peft_model, PEFT_NAMES, MIXES[row].tolist(), input_ids[row : row + 1], f"mix{row}")
    torch.testing.assert_close(stacked_logits[row : row + 1], want, rtol=0, atol=ATOL)


def test_one_hot_row_equals_the_single_peft_adapter(peft_model, stacked_logits, input_ids):
    peft_model.set_adapter(PEFT_NAMES[1])  # sentiment.negative
    with torch.no_grad():
        want = peft_model(input_ids[0:1]).logits
    torch.testing.assert_close(stacked_logits[0:1], want, rtol=0, atol=ATOL)


def test_zero_row_equals_the_base_model(base, stacked_logits, input_ids):
    with torch.no_grad():
        want = base(input_ids[3:4]).logits
    torch.testing.assert_close(stacked_logits[3:4], want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("row", range(len(MIXES)))
def test_each_row_equals_the_merged_fast_path(imodel, stacked_logits, input_ids, row):
    with imodel.merged(MIXES[row]), torch.no_grad():
        got = imodel(input_ids).logits  # every row runs the merged mix
    torch.testing.assert_close(got[row : row + 1], stacked_logits[row : row + 1], rtol=0, atol=ATOL)


@pytest.mark.parametrize("row", [1, 2])
def test_each_row_equals_hand_merged_weights(base, anchor_set, stacked_logits, input_ids, row):
    manual = copy.deepcopy(base)
    paths = {p for anchor in anchor_set.anchors for p in anchor.modules}
    with torch.no_grad():
        for path in paths:
            factors = [anchor.modules.get(path) for anchor in anchor_set.anchors]
            manual.get_submodule(path).weight += reference_merged_delta(MIXES[row], factors).float()
        want = manual(input_ids[row : row + 1]).logits
    torch.testing.assert_close(stacked_logits[row : row + 1], want, rtol=0, atol=ATOL)


def test_twin_anchors_with_weights_one_and_minus_one_give_the_base_model(base, folders, input_ids):
    twin = folders["formality.formal"]
    imodel = interpolate(copy.deepcopy(base), anchor_set_from_adapters(base, {"twin.a": twin, "twin.b": twin}))
    imodel.set_coeffs(torch.tensor([[1.0, -1.0], [1.0, 0.0]]))
    with torch.no_grad():
        got = imodel(input_ids[:2]).logits
        want = base(input_ids[:2]).logits
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
    assert not torch.allclose(got[1], want[1], atol=1e-3)  # the twin itself does change the model

"""Several anchor sets over one base model in one InterpolatedModel: rows of different sets and mixes share a
forward pass and each equals PEFT `cat` over its own set's anchors, and each set's own interpolated model."""

from __future__ import annotations

import copy

import pytest
import torch
from peft_reference import peft_cat_logits

from lerpray.lora_math import CoeffsShapeError
from lerpray.model import Engine, GenerationRequest, ModelMismatchError, SamplingParams, interpolate
from lerpray.model.multi_set import interpolate_sets, set_row
from lerpray.testing import anchor_set_from_adapters, random_adapter, tiny_gpt2, tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.component

ATOL = 1e-5
SETS = {  # set -> anchor name -> random_adapter kwargs; both sets name an anchor "tone.warm" (different weights)
    "support": {
        "tone.warm": {"r": 4, "lora_alpha": 8, "target_modules": ("q_proj", "v_proj", "o_proj"), "seed": 21},
        "tone.cold": {"r": 2, "lora_alpha": 4, "target_modules": ("k_proj", "up_proj"), "seed": 22},
    },
    "legal": {
        "tone.warm": {"r": 8, "lora_alpha": 16, "target_modules": ("q_proj", "k_proj", "down_proj"), "seed": 23},
        "tone.cold": {"r": 4, "lora_alpha": 4, "target_modules": ("v_proj", "gate_proj"), "use_rslora": True,
                      "seed": 24},
        "detail.high": {"r": 2, "lora_alpha": 2, "target_modules": ("o_proj", "up_proj"), "seed": 25},
        "detail.low": {"r": 4, "lora_alpha": 8, "target_modules": ("q_proj",), "seed": 26},
    },
}
ROWS = [  # (set, its own coefficients)
    ("support", [0.3, 0.7]),
    ("legal", [1.0, 0.0, 0.5, -0.5]),
    ("support", [1.5, -0.5]),
    ("legal", [0.0, 0.0, 0.0, 1.0]),
]


@pytest.fixture(scope="module")
def base():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def folders(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    return {s: {name: random_adapter(base, root / s / name, **kw) for name, kw in anchors.items()}
            for s, anchors in SETS.items()}


@pytest.fixture(scope="module")
def anchor_sets(base, folders):
    return {s: anchor_set_from_adapters(base, folders[s]) for s in SETS}


@pytest.fixture(scope="module")
def imodel(base, anchor_sets):
    return interpolate_sets(copy.deepcopy(base), anchor_sets)


@pytest.fixture(scope="module")
def input_ids():
    return torch.randint(3, 384, (len(ROWS), 6), generator=torch.Generator().manual_seed(2))  # [N, T]


def run(imodel, coeffs, ids):
    imodel.set_coeffs(coeffs)
    with torch.no_grad():
        return imodel(ids).logits




def test_layout_is_the_concatenation_with_one_named_block_per_set(imodel):
    assert imodel.blocks == {"support": range(0, 2), "legal": range(2, 6)}
    assert imodel.layout.anchors[:3] == ("support/tone.warm", "support/tone.cold", "legal/tone.warm")
    assert imodel.layout.attributes["legal/detail"] == ("legal/detail.low", "legal/detail.high")
    assert set_row(imodel, "legal", [1, 2, 3, 4]) == (0.0, 0.0, 1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize("row", range(len(ROWS)))
def test_rows_of_different_sets_in_one_batch_each_equal_peft_cat_of_their_set(base, folders, imodel, input_ids, row):
    got = run(imodel, [set_row(imodel, s, c) for s, c in ROWS], input_ids)
    name, coeffs = ROWS[row]
    want = peft_cat_logits(base, list(folders[name].values()), coeffs, input_ids[row : row + 1])
    torch.testing.assert_close(got[row : row + 1], want, rtol=0, atol=ATOL)


def test_rows_of_one_set_are_bit_equal_to_that_sets_own_model(base, anchor_sets, imodel, input_ids):
    for name in SETS:
        own = interpolate(copy.deepcopy(base), anchor_sets[name])
        rows = [c for s, c in ROWS if s == name]
        ids = input_ids[: len(rows)]
        assert torch.equal(run(imodel, [set_row(imodel, name, c) for c in rows], ids), run(own, rows, ids))


def test_an_engine_serves_rows_of_both_sets_in_shared_steps(base, anchor_sets, imodel):
    tokenizer = tiny_tokenizer()
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    prompts = ["Hello there", "xyz", "A longer prompt", "abc"]

    def tokens(engine, picks, rows):
        """Greedy token ids per request, the rows given for the prompts `picks`, all in one engine's batch."""
        out: dict[str, list[int]] = {}
        requests = [GenerationRequest(coeffs=tuple(c), prompt=prompts[i], sampling=params, request_id=str(i))
                    for i, c in zip(picks, rows, strict=True)]
        for event in engine.stream(requests):
            out.setdefault(event.request_id, []).append(event.token_id)
        return [out[str(i)] for i in picks]

    everyone = list(range(len(ROWS)))
    shared = tokens(Engine(imodel, tokenizer, max_batch_size=4), everyone, [set_row(imodel, s, c) for s, c in ROWS])
    for name in SETS:
        own = Engine(interpolate(copy.deepcopy(base), anchor_sets[name]), tokenizer, max_batch_size=4)
        picks = [i for i, (s, _) in enumerate(ROWS) if s == name]
        assert tokens(own, picks, [ROWS[i][1] for i in picks]) == [shared[i] for i in picks]


def test_errors_name_the_set_and_what_to_change(base, anchor_sets, imodel, tmp_path):
    gpt2 = tiny_gpt2()
    other = anchor_set_from_adapters(gpt2, {"tone.warm": random_adapter(gpt2, tmp_path / "w", target_modules=("c_attn",)),
                                            "tone.cold": random_adapter(gpt2, tmp_path / "c", target_modules=("c_attn",))})
    with pytest.raises(ModelMismatchError, match="anchor set 'gpt' does not fit the shared base model"):
        interpolate_sets(copy.deepcopy(base), {"support": anchor_sets["support"], "gpt": other})
    with pytest.raises(ValueError, match="free of '/'"):
        interpolate_sets(copy.deepcopy(base), {"a/b": anchor_sets["support"]})
    with pytest.raises(KeyError, match="holds"):
        set_row(imodel, "sales", [1.0, 0.0])
    with pytest.raises(CoeffsShapeError, match="has 2 anchors, got 3"):
        set_row(imodel, "support", [1.0, 0.0, 0.0])

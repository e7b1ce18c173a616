"""InterpolatedLinear / interpolate on other architectures (GPT-2 Conv1D, Qwen2 with biases, Mistral), in bf16, and
its errors, state handling and merged-weights LRU cache."""

from __future__ import annotations

import copy

import pytest
import torch
from peft_reference import peft_cat_logits

from lerpray.anchors.format import AnchorSetError
from lerpray.lora_math import CoeffsShapeError
from lerpray.model import CoeffsNotSetError, InterpolatedLinear, ModelMismatchError, interpolate, model_identity
from lerpray.testing import anchor_set_from_adapters, random_adapter, tiny_gpt2, tiny_llama

pytestmark = pytest.mark.component

ATOL = 1e-5
MIXES = torch.tensor([[1.0, 0.0], [0.7, -0.3], [-0.5, 1.5]])  # [N, K]


def tiny_qwen2(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def tiny_mistral(seed: int = 0):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           sliding_window=None)
    torch.manual_seed(seed)
    return MistralForCausalLM(config).eval()


def two_anchors(base, tmp_path, targets_high, targets_low):
    folders = {
        "style.high": random_adapter(base, tmp_path / "high", r=4, lora_alpha=8, target_modules=targets_high, seed=1),
        "style.low": random_adapter(base, tmp_path / "low", r=2, lora_alpha=3, target_modules=targets_low,
                                    use_rslora=True, seed=2),
    }
    return folders, anchor_set_from_adapters(base, folders)


ARCHS = {
    "gpt2-conv1d": (tiny_gpt2, ("c_attn", "c_proj", "c_fc"), ("c_attn",)),
    "qwen2-bias": (tiny_qwen2, ("q_proj", "k_proj", "v_proj", "o_proj"), ("v_proj", "down_proj")),
    "mistral": (tiny_mistral, ("q_proj", "v_proj", "up_proj"), ("k_proj", "o_proj", "gate_proj")),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_rows_equal_peft_cat_and_merged_on_other_architectures(arch, tmp_path):
    make, targets_high, targets_low = ARCHS[arch]
    base = make()
    folders, anchor_set = two_anchors(base, tmp_path, targets_high, targets_low)
    imodel = interpolate(copy.deepcopy(base), anchor_set)
    ids = torch.randint(0, 384, (len(MIXES), 6), generator=torch.Generator().manual_seed(0))
    imodel.set_coeffs(MIXES)
    with torch.no_grad():
        got = imodel(ids).logits
    assert not torch.allclose(got, base(ids).logits, atol=1e-3)
    for row in (1, 2):
        want = peft_cat_logits(base, list(folders.values()), MIXES[row].tolist(), ids[row : row + 1])
        torch.testing.assert_close(got[row : row + 1], want, rtol=0, atol=ATOL)
        with imodel.merged(MIXES[row]), torch.no_grad():
            torch.testing.assert_close(imodel(ids).logits[row], got[row], rtol=0, atol=ATOL)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def llama_anchors(llama, tmp_path_factory):
    return two_anchors(llama, tmp_path_factory.mktemp("anchors"), ("q_proj", "v_proj"), ("o_proj", "up_proj"))[1]


@pytest.fixture
def imodel(llama, llama_anchors):
    return interpolate(copy.deepcopy(llama), llama_anchors, merge_cache_size=2)


IDS = torch.randint(0, 384, (2, 5), generator=torch.Generator().manual_seed(1))  # [N, T]


def test_injection_keeps_parameter_names_identity_and_only_wraps_targets(llama, imodel):
    assert [n for n, _ in imodel.model.named_parameters()] == [n for n, _ in llama.named_parameters()]
    assert imodel.model.state_dict().keys() == llama.state_dict().keys()
    assert model_identity(imodel.model, "x") == model_identity(llama, "x")
    wrapped = {n for n, m in imodel.model.named_modules() if isinstance(m, InterpolatedLinear)}
    assert wrapped == set(imodel.layers) and len(wrapped) == 2 * 4  # 2 layers x {q, v, o, up}
    assert imodel.layers["model.layers.0.self_attn.q_proj"].A_cat.shape == (4, 32)  # only the high anchor there


def test_coefficient_errors_say_what_to_change(imodel):
    with pytest.raises(CoeffsNotSetError, match="set_coeffs"):
        imodel(IDS)
    with pytest.raises(CoeffsShapeError, match=r"K=2 .*got \[2, 3\]"):
        imodel.set_coeffs(torch.zeros(2, 3))
    with pytest.raises(CoeffsShapeError, match="finite"):
        imodel.set_coeffs([[float("nan"), 0.0]])
    imodel.set_coeffs(MIXES)  # 3 rows
    with pytest.raises(CoeffsShapeError, match="3 rows but the batch has 2"):
        imodel(IDS)
    with pytest.raises(CoeffsShapeError, match=r"\[K\]"):
        with imodel.merged(MIXES):
            pass


def test_identity_mismatch_names_the_differing_fields(llama_anchors):
    other = tiny_llama(seed=0, hidden_size=48)
    with pytest.raises(ModelMismatchError, match="hidden_size: set 32, given 48") as err:
        interpolate(other, llama_anchors)
    assert isinstance(err.value, AnchorSetError)


@pytest.mark.parametrize(
    "path, change, message",
    [
        ("model.layers.7.self_attn.q_proj", None, "does not exist"),
        ("model.embed_tokens", None, "not nn.Linear or Conv1D"),
        ("model.layers.0.self_attn.q_proj", "bad_d_in", r"do not fit d_in=32"),
    ],
)
def test_module_path_and_shape_problems_are_named(llama, llama_anchors, path, change, message):
    anchor_set = copy.deepcopy(llama_anchors)
    modules = anchor_set.anchors[0].modules
    A, B, s = modules["model.layers.0.self_attn.q_proj"]
    modules[path] = (torch.randn(4, 31), B, s) if change == "bad_d_in" else (A, B, s)
    with pytest.raises(ModelMismatchError, match=message):
        interpolate(copy.deepcopy(llama), anchor_set)


def test_interpolating_twice_is_refused(imodel, llama_anchors):
    with pytest.raises(ModelMismatchError, match="already interpolated"):
        interpolate(imodel.model, llama_anchors)


def test_merged_never_mutates_w0_and_restores_the_stacked_path(imodel):
    w0 = {p: layer.weight.detach().clone() for p, layer in imodel.layers.items()}
    imodel.set_coeffs(MIXES[1:])
    with torch.no_grad():
        before = imodel(IDS).logits
        with imodel.merged([0.3, 0.9]):
            assert all(layer.merged_weight is not None for layer in imodel.layers.values())
            with imodel.merged([1.0, 0.0]):
                inner = imodel(IDS).logits
            same = imodel(IDS[:1].expand(2, -1)).logits  # one input twice: the rows' own mixes no longer matter
            # Two identical rows of one batch need not be bit-identical (BLAS picks kernels per CPU and row
            # block), so compare at fp32 rounding; without merged() the rows differ by far more (checked below).
            torch.testing.assert_close(same[0], same[1], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(imodel(IDS).logits, inner)  # the outer mix is back
        after = imodel(IDS).logits
        unmerged = imodel(IDS[:1].expand(2, -1)).logits  # the rows' own mixes matter again
    assert all(layer.merged_weight is None for layer in imodel.layers.values())
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # the very same computation: bit for bit
    assert (unmerged[0] - unmerged[1]).abs().max() > 1e-3
    for p, layer in imodel.layers.items():
        assert torch.equal(layer.weight, w0[p])


def test_merged_weights_are_cached_per_quantised_mix_in_a_bounded_lru(imodel):
    first = imodel._merged_weights(torch.tensor([0.5, 0.5]))
    assert imodel._merged_weights(torch.tensor([0.5, 0.5 + 1e-9])) is first  # same key after quantisation
    imodel._merged_weights(torch.tensor([1.0, 0.0]))
    imodel._merged_weights(torch.tensor([0.0, 1.0]))  # evicts the least recently used: [0.5, 0.5]
    assert len(imodel._merge_cache) == 2
    assert imodel._merged_weights(torch.tensor([0.5, 0.5])) is not first


def test_bf16_buffers_follow_the_base_layer_and_stay_close_to_fp32(llama, llama_anchors):
    fp32 = interpolate(copy.deepcopy(llama), llama_anchors)
    bf16 = interpolate(copy.deepcopy(llama).to(torch.bfloat16), llama_anchors)
    layer = bf16.layers["model.layers.0.self_attn.q_proj"]
    assert layer.A_cat.dtype == layer.B_cat.dtype == torch.bfloat16
    fp32.set_coeffs(MIXES[1:])
    bf16.set_coeffs(MIXES[1:])
    with torch.no_grad():
        want = fp32(IDS).logits
        got = bf16(IDS).logits
        with bf16.merged(MIXES[1]):
            merged = bf16(IDS).logits
    assert got.dtype == torch.bfloat16
    assert layer.merge(MIXES[1]).dtype == torch.bfloat16
    scale = want.abs().max().item()
    torch.testing.assert_close(got.float(), want, rtol=0, atol=0.05 * scale)
    torch.testing.assert_close(merged[0].float(), want[0], rtol=0, atol=0.05 * scale)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.bfloat16, 0.05)])
def test_cuda_model_matches_cpu_fp32_with_cpu_anchors_and_coeffs(llama, llama_anchors, dtype, rel):
    cpu = interpolate(copy.deepcopy(llama), llama_anchors)
    gpu = interpolate(copy.deepcopy(llama).to("cuda", dtype), llama_anchors)  # anchors stay on the CPU in fp32
    layer = gpu.layers["model.layers.0.self_attn.q_proj"]
    assert layer.A_cat.is_cuda and layer.owner.is_cuda and layer.A_cat.dtype == dtype
    cpu.set_coeffs(MIXES[1:])
    gpu.set_coeffs(MIXES[1:])  # a CPU tensor
    with torch.no_grad():
        want = cpu(IDS).logits
        got = gpu(IDS.cuda()).logits
        with gpu.merged(MIXES[2]):
            merged = gpu(IDS.cuda()).logits
    atol = rel * want.abs().max().item()
    torch.testing.assert_close(got.float().cpu(), want, rtol=0, atol=atol)
    torch.testing.assert_close(merged[1].float().cpu(), want[1], rtol=0, atol=atol)

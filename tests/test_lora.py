"""LoRA: from scratch against peft, parameter counts against published ones, adapters that load back."""

import pytest
import torch
from torch import nn

import llava_nb
from llava_nb.methods.lora import LoRALinear, llava_lora_config, load_lora, lora_parameter_counts, save_lora


def test_lora_from_scratch_matches_peft_outputs_and_gradients():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(32, 16))
    ours = LoRALinear(nn.Linear(32, 16), r=4, alpha=8)
    ours.base.load_state_dict(base[0].state_dict())
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    layer = peft.base_model.model[0]
    x = torch.randn(5, 32)
    assert torch.equal(ours(x), ours.base(x))  # B = 0: step 0 is the base model
    with torch.no_grad():  # the same A and B in both
        ours.B.normal_()
        layer.lora_A["default"].weight.copy_(ours.A)
        layer.lora_B["default"].weight.copy_(ours.B)
    out_ours, out_peft = ours(x), peft(x)
    assert torch.allclose(out_ours, out_peft, atol=1e-6)
    out_ours.square().sum().backward()
    out_peft.square().sum().backward()
    assert torch.allclose(ours.A.grad, layer.lora_A["default"].weight.grad, atol=1e-5)
    assert torch.allclose(ours.B.grad, layer.lora_B["default"].weight.grad, atol=1e-5)
    assert torch.allclose(ours.merge()(x), out_ours, atol=1e-5)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), r=0, alpha=1)


def test_counts_reproduce_peft_published_numbers():
    """peft's README: Llama-2-7B, r=8 on q,v: 4,194,304 of 6,742,609,920; Qwen2.5-3B, r=16 on q,v: 3,686,400 of
    3,089,625,088 (GQA: v_proj is 2048 -> 256). Built on meta from their configs."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        llama = LlamaForCausalLM(LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                             num_attention_heads=32, num_key_value_heads=32, vocab_size=32000))
        qwen = Qwen2ForCausalLM(Qwen2Config(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                                            num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                                            tie_word_embeddings=True))
    for model, r, adapter, total in ((llama, 8, 4_194_304, 6_742_609_920), (qwen, 16, 3_686_400, 3_089_625_088)):
        c = lora_parameter_counts(model, r)
        assert (c["adapter"], c["adapter"] + c["base"]) == (adapter, total)


def test_llava_recipe_counts_match_peft_and_the_reference():
    """LLaVA's finetune_lora.sh on llava-1.5-7b: 319,815,680 LoRA parameters (r=128, every LLM Linear but lm_head)
    + 20,979,712 projector parameters trained in full (shared/reference/llava-facts.md)."""
    from peft import get_peft_model

    model = llava_nb.build_model("llava-1.5-7b", device="meta")
    ours = lora_parameter_counts(model, 128, targets=llava_nb.methods.lora.LLM_TARGETS, within="language_model")
    assert ours["adapter"] == 319_815_680
    peft = get_peft_model(model, llava_lora_config(128, 256))
    trainable, _ = peft.get_nb_trainable_parameters()
    assert trainable == 319_815_680 + 20_979_712  # the projector copy in modules_to_save trains in full


def _perturbed(seed=0, save_projector=True):
    from peft import get_peft_model

    torch.manual_seed(seed)
    base = llava_nb.build_model("tiny-llava-1.5", seed=0).eval()
    model = get_peft_model(base, llava_lora_config(8, 16, 0.0, save_projector=save_projector))
    if not save_projector:  # LLaVA's repo: the projector trained in place, outside peft's knowledge
        base.model.multi_modal_projector.requires_grad_(True)
    with torch.no_grad():  # as if trained: B away from zero, the projector changed
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _logits(model):
    from llava_nb.lab.harness import synthetic_batch

    batch = synthetic_batch(model.config if hasattr(model, "config") else model.get_base_model().config, 2, 60,
                            torch.device("cpu"), seed=3)
    batch.pop("labels")
    with torch.no_grad():
        return model(**batch).logits


def test_adapter_with_projector_loads_back_and_merges(tmp_path):
    trained = _perturbed()
    expected = _logits(trained)
    save_lora(trained, tmp_path / "adapter")
    fresh = llava_nb.build_model("tiny-llava-1.5", seed=0).eval()
    loaded = load_lora(fresh, tmp_path / "adapter").eval()
    assert torch.equal(_logits(loaded), expected)
    merged = load_lora(llava_nb.build_model("tiny-llava-1.5", seed=0).eval(), tmp_path / "adapter", merge=True)
    assert type(merged).__name__ == "LlavaForConditionalGeneration"
    assert torch.allclose(_logits(merged), expected, atol=1e-5)


def test_the_non_lora_trainables_trap(tmp_path):
    """Without the projector in the adapter (LLaVA's repo keeps it in non_lora_trainables.bin), reloading brings back
    the base projector: different outputs."""
    trained = _perturbed(save_projector=False)
    expected = _logits(trained)
    save_lora(trained, tmp_path / "adapter")
    loaded = load_lora(llava_nb.build_model("tiny-llava-1.5", seed=0).eval(), tmp_path / "adapter").eval()
    assert not torch.allclose(_logits(loaded), expected, atol=1e-3)


def test_wrong_base_gets_a_clear_error(tmp_path):
    save_lora(_perturbed(), tmp_path / "adapter")
    with pytest.raises(llava_nb.LlavaNbError, match="trained on another base model"):
        load_lora(llava_nb.build_model("llava-1.5-7b", device="meta"), tmp_path / "adapter")
    with pytest.raises(llava_nb.LlavaNbError, match="no LoRA adapter"):
        load_lora(llava_nb.build_model("tiny-llava-1.5"), tmp_path)

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import llava_nb
from llava_nb.models.params import unused_vision_modules
from llava_nb.methods.stages import freeze_for_stage, trainable_parameters


def test_llava_15_7b_reference_breakdown():
    # ../shared/reference/llava-facts.md
    c = llava_nb.count_parameters("llava-1.5-7b")
    assert c["total"] == 7_063_427_072
    assert c["breakdown"] == {"vision_tower": 303_507_456, "projector": 20_979_712, "language_model": 6_607_605_760,
                              "lm_head": 131_334_144, "image_newline": 0, "no_grad": 12_596_224 + 2_048}
    assert c["trainable"] == 6_759_919_616
    assert llava_nb.count_parameters("llava-1.5-7b", "stage1")["trainable"] == 20_979_712


def test_llava_repo_lora_recipe():
    c = llava_nb.count_parameters("llava-hf/llava-1.5-7b-hf", "lora")
    assert c["adapter"] == 319_815_680
    assert c["trainable"] == 340_795_392
    assert c["total"] == 7_063_427_072  # base only
    assert llava_nb.count_parameters("llava-1.5-7b", "qlora")["trainable"] == c["trainable"]


def test_v16_mistral_breakdown():
    c = llava_nb.count_parameters("llava-v1.6-mistral-7b")
    assert c["total"] == 7_566_747_648
    assert c["breakdown"]["language_model"] == 7_110_922_240
    assert c["breakdown"]["image_newline"] == 4_096


def test_name_config_and_module_agree():
    by_name = llava_nb.count_parameters("tiny-llava-v1.6", "lora", lora_r=4)
    by_config = llava_nb.count_parameters(llava_nb.get_config("tiny-llava-v1.6"), "lora", lora_r=4)
    by_module = llava_nb.count_parameters(llava_nb.build_model("tiny-llava-v1.6"), "lora", lora_r=4)
    assert by_name == by_config == by_module


@pytest.mark.parametrize("name", ["tiny-llava-v1", "tiny-llava-1.5", "tiny-llava-v1.6"])
def test_no_grad_matches_autograd(name):
    model = llava_nb.build_model(name).train()
    model.requires_grad_(True)
    processor = llava_nb.build_processor(name)
    batch = processor(images=llava_nb.sample_image("coffee"), text="USER: <image>\nHi ASSISTANT:", return_tensors="pt")
    model(**batch).logits.float().pow(2).mean().backward()
    without_grad = sum(p.numel() for p in model.parameters() if p.grad is None)
    assert without_grad == llava_nb.count_parameters(model)["breakdown"]["no_grad"] > 0
    names = {n for n, _ in unused_vision_modules(model)}
    assert "post_layernorm" in names


@pytest.mark.parametrize("name", ["tiny-llava-v1", "tiny-llava-1.5", "tiny-llava-v1.6"])
def test_lora_adapter_count_matches_peft(name):
    """LLaVA's recipe: every Linear of the LLM (not lm_head, not the ViT or projector)."""
    model = llava_nb.build_model(name)
    targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    adapter = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert adapter == llava_nb.count_parameters(name, "lora", lora_r=8)["adapter"]


def test_peft_published_llama2_count():
    """PEFT's README: Llama-2-7B, r=8 on q_proj and v_proj: 4,194,304 trainable of 6,742,609,920."""
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      vocab_size=32000)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    c = llava_nb.count_parameters(model, "lora", lora_r=8, lora_targets=["q_proj", "v_proj"])
    assert c["adapter"] == 4_194_304
    assert c["total"] + c["adapter"] == 6_742_609_920


def test_errors():
    with pytest.raises(llava_nb.UnknownMethodError, match="engines: ddp, zero1"):
        llava_nb.count_parameters("llava-1.5-7b", "zero4")
    with pytest.raises(llava_nb.LlavaNbError, match="choose from"):
        llava_nb.count_parameters("tiny-llava-1.5", "lora", lora_targets=["qkv"])
    with pytest.raises(llava_nb.LlavaNbError, match="positive"):
        llava_nb.count_parameters("tiny-llava-1.5", "lora", lora_r=0)
    with pytest.raises(llava_nb.UnknownModelError):
        llava_nb.count_parameters("gpt-5")


@pytest.mark.parametrize("name", ["tiny-llava-v1", "tiny-llava-1.5", "tiny-llava-v1.6"])
def test_freeze_for_stage_matches_counts(name):
    model = llava_nb.build_model(name)
    for stage, method in [("stage1", "stage1"), ("stage2", "full")]:
        freeze_for_stage(model, stage)
        assert trainable_parameters(model) == llava_nb.count_parameters(model, method)["trainable"]
        assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    with pytest.raises(llava_nb.UnknownMethodError):
        freeze_for_stage(model, "stage3")

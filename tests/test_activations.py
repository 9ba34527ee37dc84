"""The calculator's activation terms (``llava_nb.memory.activations``) against autograd itself: the bytes of the
tensors a real LLaVA block saves for backward, walked on a CPU here and on an H200 in the committed data."""

from __future__ import annotations

import copy
import json

import pytest

from llava_nb.memory.activations import Block, block_constant, block_terms, checkpointed_bytes, compute_of
from llava_nb.memory.estimate import estimate_memory
from llava_nb.methods.registry import get_method
from llava_nb.models.architectures import get_config
from llava_nb.paths import DATA_DIR

METHODS = ("zero3", "zero3+lora", "lora", "ddp", "qlora")
GPU_RECORDS = DATA_DIR / "gpu" / "activations_gpu.jsonl"


def block_of(config) -> Block:
    t = config.text_config
    return Block(t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads,
                 getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads)


def predicted(config, method: str, attention: str, micro_batch: int, seq_len: int, device: str,
              deepspeed_linear: bool = False) -> int:
    compute = compute_of(get_method(method), device, deepspeed_linear)
    block = block_of(config)
    per_token = sum(block_terms(block, compute, attention, seq_len, lora_r=128).values())
    return per_token * micro_batch * seq_len + block_constant(block, compute, 128, attention)


def gqa_config():
    """The tiny model with grouped-query attention (2 KV heads of 4) and a head size that is not h / a."""
    config = copy.deepcopy(get_config("tiny-llava-1.5"))
    config.text_config.num_key_value_heads = 2
    config.text_config.head_dim = 16
    return config


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("which", ["llama", "gqa"])
def test_block_terms_equal_what_autograd_saves(which, method, attention):
    from llava_nb.lab.activations import block_and_rest

    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    config = get_config("tiny-llava-1.5") if which == "llama" else gqa_config()
    got = block_and_rest(config, method, 2, 100, attention=attention)["saved"]["block"]
    assert got == predicted(config, method, attention, 2, 100, "cpu", deepspeed_linear=False)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["zero3", "zero3+lora"])
def test_deepspeeds_linear_keeps_frozen_inputs(method, attention):
    """Under ZeRO-3, DeepSpeed's Linear saves its input even for a frozen weight: zero3+lora keeps full fine-tuning's
    linear inputs, zero3 is unchanged."""
    pytest.importorskip("deepspeed")
    from llava_nb.lab.activations import block_and_rest

    config = gqa_config()
    got = block_and_rest(config, method, 2, 100, attention=attention, deepspeed_linear=True)["saved"]["block"]
    assert got == predicted(config, method, attention, 2, 100, "cpu", deepspeed_linear=True)
    if method == "zero3+lora":
        assert got > predicted(config, method, attention, 2, 100, "cpu", deepspeed_linear=False)


def test_gpu_walks_equal_the_terms():
    """Every forward walked on the H200 (7B and Mistral blocks, five methods, two kernels; the harness runs torch's
    own Linear, not DeepSpeed's): byte for byte."""
    records = [json.loads(line) for line in GPU_RECORDS.read_text().splitlines()]
    walked = [r for r in records if r.get("saved")]
    assert len(walked) >= 30
    for r in walked:
        want = predicted(get_config(r["model"]), r["method"], r["attention"], r["micro_batch"], r["seq_len"], "cuda",
                         deepspeed_linear=False)
        assert r["saved"]["block"] == want, r


def test_gpu_checkpointed_blocks_keep_their_input():
    """With checkpointing, the allocator grows by one stream-width input per block: 2h bytes a token in bf16, 4h for
    QLoRA's and DDP's fp32 stream. The allocator's difference of two separate builds is noisy (a free, or a
    quantisation buffer, can land between them: one record went negative), so nine in ten must agree within 10%."""
    records = [json.loads(line) for line in GPU_RECORDS.read_text().splitlines()]
    agree, misses = 0, []
    for r in records:
        tokens = r["micro_batch"] * r["seq_len"]
        if not r["grad_checkpointing"] or tokens < 4096:
            continue
        want = checkpointed_bytes(block_of(get_config(r["model"])), compute_of(get_method(r["method"])))
        if r["allocated"]["block"] / tokens == pytest.approx(want, rel=0.10):
            agree += 1
        else:
            misses.append((r["model"], r["method"], r["attention"], r["allocated"]["block"] / tokens, want))
    assert agree >= 18 and agree >= 9 * len(misses), misses


def test_eager_attention_grows_with_the_sequence_and_sdpa_does_not():
    est = {(att, s): estimate_memory("llava-1.5-7b", "zero3", seq_len=s, grad_checkpointing=False, attention=att)
           for att in ("sdpa", "eager") for s in (1024, 4096)}
    per_token = {k: e.phases["loss"]["activations"] / k[1] for k, e in est.items()}
    assert per_token[("sdpa", 4096)] == pytest.approx(per_token[("sdpa", 1024)])
    # eager adds 6 a s bytes per token per block: the fp32 softmax and its bf16 copy
    assert per_token[("eager", 4096)] - per_token[("eager", 1024)] == pytest.approx(32 * 6 * 32 * 3072)


@pytest.mark.parametrize("method", ["ddp", "lora"])
def test_training_forwards_keep_no_kv_cache(method):
    """As LLaVA's train.py:842: without it a forward without checkpointing builds a cache whose fp32 keys (DDP's
    autocast) or keys and values (QLoRA) are not the tensors attention saves: 4 g e or 8 g e bytes a token per block
    on the H200 (data/gpu/activations_gpu.jsonl, measured before the cache was turned off)."""
    import torch

    from llava_nb.lab.activations import _build
    from llava_nb.lab.harness import synthetic_batch

    model = _build(get_config("tiny-llava-1.5"), get_method(method), torch.device("cpu"), False, "sdpa", 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # torch DDP's bf16 autocast, as train() runs these
        out = model(**synthetic_batch(model.config, 1, 100, "cpu"))
    assert out.past_key_values is None


def test_an_unknown_attention_kernel_is_a_one_line_error():
    from llava_nb.memory.estimate import MemoryConfigError

    with pytest.raises(MemoryConfigError, match="attention='flash2' is not a kernel"):
        estimate_memory("llava-1.5-7b", "lora", attention="flash2")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name, image_size", [("tiny-llava-1.5", None), ("tiny-llava-v1.6", (60, 150))])
def test_trained_vit_layers_equal_what_autograd_saves(name, image_size, method, attention):
    """With the ViT trained (``unfreeze_vision``), one CLIP layer's saved bytes for the micro-batch's views (v1.6:
    the base image and its anyres tiles), against the walk of two builds with 3 and 4 ViT layers."""
    from llava_nb.lab.activations import block_and_rest
    from llava_nb.memory.activations import vit_block_constant, vit_block_terms
    from llava_nb.memory.estimate import _vision

    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    config = get_config(name)
    seq_len = 900 if image_size else 100
    got = block_and_rest(config, method, 2, seq_len, layers=(3, 4), part="vit", attention=attention,
                         unfreeze_vision=True, image_size=image_size)["saved"]["block"]
    vision = _vision(config, 2, image_size)
    compute = compute_of(get_method(method), "cpu", deepspeed_linear=False)
    per_token = sum(vit_block_terms(vision["block"], compute, attention, vision["view_tokens"]).values())
    assert got == per_token * vision["tokens"] + vit_block_constant(vision["block"], compute, attention)


@pytest.mark.parametrize("method", METHODS)
def test_unfreeze_vision_counts_what_setup_model_trains(method):
    import torch

    from llava_nb.lab.activations import _build

    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    model = _build(get_config("tiny-llava-1.5"), get_method(method), torch.device("cpu"), False, "sdpa", 0,
                   unfreeze_vision=True)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimate_memory("tiny-llava-1.5", method, seq_len=100, unfreeze_vision=True).trainable == trained
    frozen_vit = estimate_memory("tiny-llava-1.5", method, seq_len=100).trainable
    assert trained - frozen_vit == sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n)

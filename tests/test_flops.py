"""The model-FLOPs arithmetic (``models.flops``) against torch's own FLOP counter on a real forward and backward."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llava_nb.models.architectures import build_model
from llava_nb.models.flops import matrix_params, mfu, peak_tflops, train_flops
from llava_nb.models.layout import parameter_owners


def _counted(model, lengths: list[int], train_llm: bool) -> int:
    """FLOPs torch counts for the LLM and projector (the ViT is left out, as ``models.flops`` leaves it) on one
    forward and backward of sequences of ``lengths``, each on its own (no padding)."""
    llm, head = model.model.language_model, model.lm_head
    proj = model.model.multi_modal_projector
    for p in model.parameters():
        p.requires_grad_(train_llm)
    for p in proj.parameters():
        p.requires_grad_(True)
    total = 0
    for t in lengths:
        feats = torch.randn(1, t, model.config.vision_config.hidden_size)
        with FlopCounterMode(display=False) as counter:
            embeds = proj(feats)  # every position through the projector: N_projector per token, like the LLM
            out = head(llm(inputs_embeds=embeds).last_hidden_state)
            out.float().pow(2).mean().backward()
        total += counter.get_total_flops()
    return total


@pytest.mark.parametrize("train_llm", [True, False])
def test_train_flops_match_torch_flop_counter(train_llm):
    model = build_model("tiny-llava-1.5", dtype=torch.float32)
    model.model.language_model.config._attn_implementation = "eager"  # matmuls torch counts (not the CPU flash kernel)
    lengths = [7, 19, 33]
    predicted = train_flops(model.config, sum(lengths), sum(t * t for t in lengths), frozen_base=not train_llm)
    counted = _counted(model, lengths, train_llm)
    assert counted == pytest.approx(predicted, rel=1e-3)


def test_matrix_params_equal_the_layouts_linears():
    owners = parameter_owners("llava-1.5-7b")
    linears = {part: sum(math.prod(o.params[0][1]) for o in owners if o.kind == "linear" and o.part == part)
               for part in ("language_model", "lm_head", "projector")}
    m = matrix_params("llava-1.5-7b", lora_r=128)
    assert m["llm"] == linears["language_model"] + linears["lm_head"]
    assert m["projector"] == linears["projector"]
    # LoRA's A (r x in) and B (out x r) on every block Linear: 2 r per (in + out)
    in_out = sum(sum(o.params[0][1]) for o in owners if o.kind == "linear" and o.part == "language_model")
    assert m["adapter"] == 128 * in_out


def test_mfu_uses_the_gpus_peak():
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("a CPU") is None
    flops = train_flops("llava-1.5-7b", 10_000, 10 * 1000**2)
    assert mfu("llava-1.5-7b", 10_000, 10 * 1000**2, 1.0, 2, "NVIDIA H200") == pytest.approx(flops / 2 / 989e12)
    assert mfu("llava-1.5-7b", 10_000, 10 * 1000**2, 1.0, 1, "a CPU") is None

"""Model FLOPs of a training step and the model FLOPs utilisation (MFU) they give (pure Python, no torch).

PaLM's accounting (Chowdhery et al. 2022, appendix B): a dense decoder with N matrix parameters, L layers, H heads
of size Q, trained on a sequence of T tokens, costs per token

    6 N + 12 L H Q T        (forward 2 N, backward 4 N: gradients of the activations 2 N, of the weights 2 N)

so a sequence costs ``6 N T + 12 L H Q T^2`` and a batch ``6 N sum(T) + 12 L H Q sum(T^2)``. N counts the LLM's
Linear weights, the lm_head and the projector (embedding lookups are not matrix products). Recomputation under
gradient checkpointing is not counted: MFU counts the work the model needs, not the work the run did.

With a frozen base (LoRA, QLoRA) the base weights get no gradient: 4 N for the base plus 6 N_a for the adapters
(and the projector, which trains in full). The projector's first Linear skips its input gradient (2 N_in: the ViT
under it is frozen). The frozen ViT runs forward only, 2 N_vit per image position plus its
attention; it is left out here, as PaLM's accounting counts only the model being trained.

MFU = achieved model FLOPs per second / the GPU's peak dense bf16 FLOPs.
"""

from __future__ import annotations

from .layout import read_numbers

#: peak dense bf16 tensor-core TFLOPS (without 2:4 sparsity), from NVIDIA's data sheets:
#: H100 and H200 SXM 989 (https://www.nvidia.com/en-us/data-center/h200/ lists 1,979 "with sparsity"),
#: A100 312 (https://www.nvidia.com/en-us/data-center/a100/).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def peak_tflops(device_name: str) -> float | None:
    """The peak of a GPU named like ``torch.cuda.get_device_name()`` ("NVIDIA H200"), or None if unknown."""
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def matrix_params(model, lora_r: int = 0) -> dict:
    """N split by what trains: ``llm`` (blocks' Linears and the lm_head), ``projector`` (``projector_in``: its
    first Linear), ``adapter`` (LoRA's A and
    B at rank ``lora_r`` on every block Linear; 0 without adapters)."""
    n = read_numbers(model)
    h, i, layers, heads, kv_heads, e, vocab = n.llm
    per_block = h * heads * e * 2 + h * kv_heads * e * 2 + 3 * h * i  # q, o; k, v; gate, up, down
    d, k = n.vit[0], len(n.feature_layers)
    projector = k * d * h + (h * h if n.projector == "mlp2x_gelu" else 0)
    adapter = layers * lora_r * ((h + heads * e) * 2 + (h + kv_heads * e) * 2 + 3 * (h + i))
    return {"llm": layers * per_block + vocab * h, "projector": projector, "projector_in": k * d * h,
            "adapter": adapter}


def train_flops(model, tokens: int, tokens_squared: int, frozen_base: bool = False, lora_r: int = 0) -> float:
    """Model FLOPs of training on sequences with ``sum(T) = tokens`` and ``sum(T^2) = tokens_squared`` (the module
    docstring's formula); ``frozen_base`` when the LLM does not train (LoRA and QLoRA, with adapters of rank
    ``lora_r``; stage 1, with none)."""
    n = read_numbers(model)
    _, _, layers, heads, _, e, _ = n.llm
    m = matrix_params(model, lora_r)
    if frozen_base:
        linear = 4 * m["llm"] + 6 * (m["projector"] + m["adapter"])
    else:
        linear = 6 * (m["llm"] + m["projector"])
    linear -= 2 * m["projector_in"]  # the frozen ViT below needs no gradient of the projector's input
    return linear * tokens + 12 * layers * heads * e * tokens_squared


def mfu(model, tokens: int, tokens_squared: int, seconds: float, gpus: int, device_name: str,
        frozen_base: bool = False, lora_r: int = 0) -> float | None:
    """Model FLOPs utilisation of ``gpus`` GPUs named ``device_name`` that trained those tokens in ``seconds``."""
    peak = peak_tflops(device_name)
    if not peak or seconds <= 0:
        return None
    return train_flops(model, tokens, tokens_squared, frozen_base, lora_r) / seconds / (gpus * peak * 1e12)

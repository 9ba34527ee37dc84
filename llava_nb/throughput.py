"""Speed of a training step: model FLOPs, the card's measured matrix rate, tokens per second and MFU, and how many
bytes ZeRO-3 and FSDP move per step.

Model FLOPs (what the step must compute, recomputation from gradient checkpointing not counted), per micro-batch of
``b`` samples of ``s`` tokens, ``n`` of them image tokens, following PaLM's MFU convention (Chowdhery et al. 2022,
appendix B; causal attention not halved)::

    LLM      6 * (N_linear + N_lm_head) * b * s  +  12 * L * h * s * b * s       forward + backward
    projector 6 * N_projector * b * n                                            trained, on image tokens
    ViT      2 * N_vit * b * t  +  4 * L_v * h_v * t * b * t                     frozen: forward only (t = patches + 1)

    MFU = model FLOPs per step / (step time * the card's measured bf16 matrix rate)

Communication per step and rank, for a ring all-gather or reduce-scatter of a message of M bytes over w ranks each
rank sends (w - 1) / w * M. Both ZeRO-3 and FSDP (resharding after forward) all-gather every bf16 parameter once in
forward and once more in backward (the frozen ViT only in forward: nothing flows back into it), and reduce-scatter
the trainable gradients: in bf16 under DeepSpeed's bf16 mode, in fp32 under our FSDP policy (``reduce_dtype``)::

    bytes = (w - 1) / w * (2 * P  +  2 * (P - N_vit)  +  g * T),   g = 2 (ZeRO-3) or 4 (FSDP)
"""

from __future__ import annotations

import statistics
import time

import torch

from .architectures import as_config
from .memory import model_shapes


def matmul_tflops(n: int = 8192, dtype: torch.dtype = torch.bfloat16, iters: int = 50, device=None) -> float:
    """The measured dense matrix-multiply rate of this device in TFLOP/s: ``iters`` (n x n) @ (n x n) products
    after a warm-up, 2 n^3 FLOPs each. The MFU denominator, instead of the data sheet's peak."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def model_flops(model, micro_batch: int, seq_len: int) -> dict:
    """Model FLOPs of one training micro-batch (see the module docstring), by part and ``total``."""
    shapes = model_shapes(model)
    vision = as_config(model).vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    n_img = patches  # LLaVA-1.5 ("default" feature selection drops the CLS token)
    t = patches + 1
    b, s = micro_batch, seq_len
    out = {
        "llm": 6 * (shapes.llm_linear + shapes.lm_head) * b * s + 12 * shapes.layers * shapes.hidden * s * b * s,
        "projector": 6 * shapes.projector * b * n_img,
        "vit": 2 * shapes.vision * b * t + 4 * vision.num_hidden_layers * vision.hidden_size * t * b * t,
    }
    out["total"] = sum(out.values())
    return out


def step_time(record: dict, warmup: int = 2) -> float:
    """Median step time of a ``llava_nb.measure`` record, the first ``warmup`` steps left out."""
    times = record["step_s"][warmup:]
    if not times:
        raise ValueError(f"the record has {len(record['step_s'])} steps; at least {warmup + 1} are needed")
    return statistics.median(times)


def speed(record: dict, tflops: float, warmup: int = 2) -> dict:
    """Step time, tokens per second (all ranks) and MFU of a measured record, against ``tflops`` per card."""
    step = step_time(record, warmup)
    world, b, s = record["gpus"], record["micro_batch"], record["seq_len"]
    flops = model_flops(record["model"], b, s)["total"]
    return {"step_s": step, "tokens_per_s": world * b * s / step, "mfu": flops / (step * tflops * 1e12)}


def communication_bytes(model, method: str, world: int) -> dict:
    """Bytes one rank sends per training step under ``zero3`` or ``fsdp`` (module docstring), by collective."""
    if method not in ("zero3", "fsdp"):
        raise ValueError(f"communication_bytes models zero3 and fsdp, not {method!r}")
    shapes = model_shapes(model)
    share = (world - 1) / world
    grad_bytes = 2 if method == "zero3" else 4
    out = {"all_gather_forward": share * 2 * shapes.total,
           "all_gather_backward": share * 2 * (shapes.total - shapes.vision),
           "reduce_scatter": share * grad_bytes * shapes.trainable}
    out["total"] = sum(out.values())
    return out

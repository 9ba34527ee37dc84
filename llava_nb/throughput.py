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
    """Model FLOPs of one training micro-batch (see the module docstring), by part and ``total``. The matmul parts
    count every weight of a part, so the few non-matmul parameters (norms, position embeddings) count too."""
    shapes = model_shapes(model)
    vision = as_config(model).vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    n_img = patches  # LLaVA-1.5 ("default" feature selection drops the CLS token)
    t = patches + 1
    b, s = micro_batch, seq_len
    out = {
        "llm_matmul": 6 * (shapes.llm_linear + shapes.lm_head) * b * s,
        "llm_attention": 12 * shapes.layers * shapes.hidden * s * b * s,
        "projector": 6 * shapes.projector * b * n_img,
        "vit_matmul": 2 * shapes.vision * b * t,
        "vit_attention": 4 * vision.num_hidden_layers * vision.hidden_size * t * b * t,
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


def load_engine_runs(path=None) -> dict:
    """The records of ``data/gpu/engines_gpu.jsonl`` by kind: ``matmul`` ({gpu name: TFLOP/s}), ``measure``, ``tiny``."""
    import json
    from pathlib import Path

    from .paths import DATA_DIR

    path = Path(path or DATA_DIR / "gpu" / "engines_gpu.jsonl")
    out = {"matmul": {}, "measure": [], "tiny": []}
    for rec in map(json.loads, path.read_text().splitlines()):
        if rec["kind"] == "matmul":
            out["matmul"][rec["versions"]["gpu"]] = rec["tflops"]
        elif rec["kind"] in ("measure", "tiny"):
            out[rec["kind"]].append(rec)
    return out


def speed_rows(records: list[dict], tflops: dict, warmup: int = 2) -> list[dict]:
    """One row per measured record: engine (the run's name), GPUs, point, step time, tokens/s and MFU against the
    same card's measured rate (``tflops`` by GPU name; MFU is None where that card's rate was not measured)."""
    rows = []
    for r in records:
        if r["oom"]:
            continue
        gpu = r["versions"].get("gpu")
        rate = tflops.get(gpu)
        s = speed(r, rate or 1.0, warmup)
        rows.append({"engine": r.get("name", r["method"]), "gpus": r["gpus"], "gpu": gpu,
                     "point": f"{r['micro_batch']}x{r['seq_len']}", "step_s": s["step_s"],
                     "tokens_per_s": s["tokens_per_s"], "mfu": s["mfu"] if rate else None,
                     "checkpointing": r["grad_checkpointing"]})
    return rows


def phase_rows(records: list[dict]) -> list[dict]:
    """Median seconds of forward, backward and optimizer step of the records timed phase by phase."""
    rows = []
    for r in records:
        if not r.get("phase_s"):
            continue
        med = {k: statistics.median(p[k] for p in r["phase_s"]) for k in ("forward", "backward", "step")}
        ckpt = "" if r["grad_checkpointing"] else ", no checkpointing"
        rows.append({"label": f"{r['method']} {r['micro_batch']}x{r['seq_len']}{ckpt}", "method": r["method"],
                     "point": f"{r['micro_batch']}x{r['seq_len']}", "checkpointing": r["grad_checkpointing"], **med})
    return rows

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

from ..models.architectures import as_config
from ..memory.estimate import model_shapes


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
    """Median step time of a ``llava_nb.lab.measure`` record, the first ``warmup`` steps left out."""
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


def load_gpu_runs(path) -> dict:
    """A GPU script's JSON-lines records by kind (``kind`` -> list), with ``matmul`` as {gpu name: TFLOP/s, the
    mean over the machines measured}; ``path`` is relative to ``data/gpu/`` unless absolute."""
    import json
    from pathlib import Path

    from ..paths import DATA_DIR

    out, rates = {"matmul": {}, "measure": [], "tiny": []}, {}
    for rec in map(json.loads, (DATA_DIR / "gpu" / Path(path)).read_text().splitlines()):
        if rec["kind"] == "matmul":
            rates.setdefault(rec["versions"]["gpu"], []).append(rec["tflops"])
        else:
            out.setdefault(rec["kind"], []).append(rec)
    out["matmul"] = {gpu: statistics.mean(r) for gpu, r in rates.items()}
    return out


def load_engine_runs(path=None) -> dict:
    """``data/gpu/engines_gpu.jsonl`` (ZeRO-3 against FSDP2) through ``load_gpu_runs``: ``matmul``, ``measure``,
    ``tiny``."""
    return load_gpu_runs(path or "engines_gpu.jsonl")


def dequant_seconds(linear: list[dict], model: str = "llava-1.5-7b", checkpointing: bool = True) -> float:
    """Seconds per training step that NF4 adds to the LLM's frozen Linears, predicted from one-layer timings.

    ``linear`` holds ``quant.linear4bit_timing`` records, one per Linear shape (in, out). A frozen ``Linear4bit``
    costs ``nf4 - bf16`` more than a bf16 Linear per forward + backward (its weight is dequantized in each), and
    with gradient checkpointing the forward runs once more in backward::

        extra = layers * sum over the layer's Linears of (fb_nf4 - fb_bf16) + checkpointing * (f_nf4 - f_bf16)
    """
    from ..models.architectures import get_config

    text = get_config(model).text_config
    h, i = text.hidden_size, text.intermediate_size
    kv = h // text.num_attention_heads * getattr(text, "num_key_value_heads", text.num_attention_heads)
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q, k, v, o, gate, up, down
    by_shape = {(r["in_features"], r["out_features"]): r for r in linear}
    missing = sorted(set(shapes) - set(by_shape))
    if missing:
        raise ValueError(f"no linear4bit timing for the shapes {missing} of {model}")
    per_layer = 0.0
    for shape in shapes:
        r = by_shape[shape]
        per_layer += r["nf4_forward_backward_ms"] - r["bf16_forward_backward_ms"]
        if checkpointing:
            per_layer += r["nf4_forward_ms"] - r["bf16_forward_ms"]
    return text.num_hidden_layers * per_layer / 1e3


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
        rows.append({"label": f"{r['method']}, {r['gpus']} GPUs, {r['micro_batch']}x{r['seq_len']}{ckpt}",
                     "method": r["method"], "gpus": r["gpus"], "point": f"{r['micro_batch']}x{r['seq_len']}",
                     "checkpointing": r["grad_checkpointing"], **med})
    return rows


def cpu_step_profile(model, batch: dict, bf16: bool, steps: int = 20, warmup: int = 3, top: int = 5) -> dict:
    """One training step of ``model`` on ``batch`` on this CPU: forward, backward and an AdamW step, under bf16
    autocast (as Accelerate's ``mixed_precision="bf16"`` runs it on a CPU) or in fp32, with the attention kernel
    the model is set to. Returns the median ``step_ms`` of ``steps`` steps after ``warmup``, and the ``top``
    operators by their own CPU time per step (``torch.profiler``, over 5 more steps) in ``top_ops``.

    The model's weights change as it trains; the time of a step does not depend on them."""
    from torch.profiler import ProfilerActivity, profile

    from ..training.optimizer import make_optimizer

    optimizer = make_optimizer(model, 1e-4, 0.0)
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    profiled = 5
    # acc_events: one cycle here either way; said explicitly, torch 2.11's profiler does not warn that it clears
    # events between cycles (a UserWarning, an error under the test suite's warnings-as-errors)
    with profile(activities=[ProfilerActivity.CPU], acc_events=True) as prof:
        for _ in range(profiled):
            step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"step_ms": statistics.median(times) * 1e3,
            "top_ops": {e.key: e.self_cpu_time_total / 1e3 / profiled for e in ops}}  # ms per step

"""train() at full size on stand-in checkpoints: memory per rank and speed (data/gpu/train_full.jsonl).

The README's real-checkpoint command, run as a reader runs it: ``make-checkpoint`` writes a random-weight llava-hf
checkpoint of the model, then ``python -m llava_nb train`` trains stage 2 on it with each method and LLaVA's recipe
(bf16, tf32, gradient checkpointing; a global batch of ``--batch-size``, 32 by default to keep each run short),
the micro-batch chosen by the plan for the GPUs' memory::

    python -m experiments.gpu train_full --model llava-1.5-7b --methods lora,zero3 --steps 20 --out $OUT/train_full.jsonl

The data are the tiny world's synthetic images and questions: square ones for v1.5 (the processor resizes them to
336 px, 576 image tokens), several aspect ratios for v1.6 (anyres tiles, up to 2,000-odd image tokens). Each record holds the plan (micro-batch, accumulation,
predicted steady and peak at the plan's sequence length), the calculator's prediction at the longest sequence the
run saw, what ``train()`` measured (``result["measured"]``: each rank's peak and steady memory from the CUDA
allocator, tokens per second) and the states' dtypes. Resumable: a (model, method, gpus) already in
``data/gpu/train_full.jsonl`` or ``--out`` is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ENV, GPU_DIR, append, done

DONE = GPU_DIR / "train_full.jsonl"
KEY = ("model", "method", "gpus", "micro_batch_override", "steps")


def add_arguments(p) -> None:
    p.add_argument("--model", default="llava-1.5-7b")
    p.add_argument("--methods", default="lora,zero3,fsdp,qlora,zero3-offload")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (LLaVA's stage 2: 128)")
    p.add_argument("--micro-batch", type=int, help="override the plan's micro-batch (the record says so)")
    p.add_argument("--samples", type=int, default=3000, help="synthetic training samples")
    p.add_argument("--checkpoints", help="where the stand-ins are written and reused (default: under --work)")
    p.add_argument("--budget", type=float, default=540, help="seconds: start no run after this")
    p.add_argument("--out", required=True, help="JSON-lines file the new records are appended to")


def _checkpoint(model: str, root: Path) -> Path:
    folder = root / model
    if not (folder / "config.json").exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "llava_nb", "make-checkpoint", "--like", model, "--out", str(folder)],
                       check=True, env={**os.environ, **ENV})
        print(f"make-checkpoint {model}: {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def _run(folder: Path, method: str, data: dict, steps: int, batch: int, micro: int | None,
         work: Path) -> tuple[dict | None, str]:
    """The train command on ``folder``; (result.json, the end of the output)."""
    out = work / method
    cmd = [sys.executable, "-m", "llava_nb", "train", "--model", str(folder), "--stage", "2", "--method", method,
           "--data", str(data["instruct"]), "--image-folder", str(data["image_folder"]), "--output-dir", str(out),
           "--batch-size", str(batch), "--max-steps", "100000", "--set", f"stop_after={steps}", "--set", "log_every=5"]
    if micro:
        cmd += ["--micro-batch", str(micro)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV})
    result = out / "result.json"
    plan = [line for line in proc.stdout.splitlines() if line.startswith("plan: ")]
    tail = "\n".join(plan) + "\n" + (proc.stdout + proc.stderr)[-3000:]
    return (json.loads(result.read_text()) if result.exists() else None), tail


def _record(model: str, method: str, result: dict, seconds: float) -> dict:
    """What the chapter plots: the plan, the prediction at the longest sequence seen, and the measurement."""
    from llava_nb.lab.harness import versions
    from llava_nb.memory.estimate import estimate_memory

    plan, measured = result.get("plan") or {}, result["measured"]
    at_seen = estimate_memory(model, method, gpus=result["num_processes"], micro_batch=result["micro_batch"],
                              seq_len=measured["max_seq_len"])
    return {"model": model, "method": result["method"], "gpus": result["num_processes"], "steps": result["steps"],
            "micro_batch": result["micro_batch"], "accumulation": result["gradient_accumulation_steps"],
            "plan": plan, "predicted_at_seen": {"seq_len": measured["max_seq_len"], "steady_gib": at_seen.steady_gib,
                                                "peak_gib": at_seen.peak_gib},
            "measured": measured, "states": result["states"], "trainable": result["trainable_parameters"],
            "losses": result["losses"], "seconds": round(seconds, 1), "versions": versions()}


def main(a) -> None:
    import torch

    from llava_nb.training.api import synthetic_data

    out = Path(a.out)
    gpus = torch.cuda.device_count()
    skip = done(DONE, out, key=KEY)
    start = time.perf_counter()
    folder = _checkpoint(a.model, Path(a.checkpoints) if a.checkpoints else a.work / "checkpoints")
    from llava_nb.models.specs import get_spec

    anyres = get_spec(a.model).model_type == "llava_next"  # v1.6: images of several aspect ratios, tiled by anyres
    data = synthetic_data("tiny-llava-v1.6" if anyres else "tiny-llava-1.5", n_images=a.samples, n_test=8)
    with tempfile.TemporaryDirectory() as tmp:
        for method in a.methods.split(","):
            if (a.model, method, gpus, a.micro_batch, a.steps) in skip:
                continue
            if time.perf_counter() - start > a.budget:
                print(f"budget spent: {method} left for the next call", flush=True)
                break
            began = time.perf_counter()
            result, tail = _run(folder, method, data, a.steps, a.batch_size, a.micro_batch, Path(tmp))
            if result is None or "measured" not in result:
                append(out, {"model": a.model, "method": method, "gpus": gpus, "micro_batch_override": a.micro_batch,
                             "steps": a.steps, "error": tail}, show=KEY)
                continue
            append(out, {**_record(a.model, method, result, time.perf_counter() - began),
                         "micro_batch_override": a.micro_batch},
                   show=(*KEY, "micro_batch", "measured", "predicted_at_seen"))

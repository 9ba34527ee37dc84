"""ZeRO-3 against FSDP2 on 2 and 4 GPUs: tiny model and 7B, timed (data/gpu/engines_gpu.jsonl).

The DeepSpeed and FSDP chapters' training in GPU mode, then the full-size llava-1.5-7b architecture (random weights)
at the same batches, timed::

    python -m experiments.gpu engines_gpu --gpus 2 --out $OUT/engines_gpu.jsonl

One call per GPU count, resumable: a step whose record is already in ``data/gpu/engines_gpu.jsonl`` (or in
``--out``) is skipped. Records (one JSON line each, with the GPU name and library versions):

* ``matmul``: the card's measured bf16 matrix rate (``throughput.matmul_tflops``), the MFU denominator;
* ``tiny``: ``python -m llava_nb train --model tiny-llava-1.5 --stage 2 --method M --num-processes N`` (stage 1
  first, as the CLI does), with its JSON result (losses, engine, accuracy, seconds);
* ``measure``: ``python -m llava_nb.lab.measure`` records of the 7B (step times per point, memory, holdings), for the
  ``RUNS`` below: ZeRO-3 with LLaVA's ``zero3.json`` ("auto" buckets), ZeRO-3 with larger buckets, FSDP2, and both
  engines timed phase by phase, with and without gradient checkpointing;
* ``tiny error`` / ``measure error``: a run that failed, with the end of its stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import ENV, GPU_DIR, append, done

DONE = GPU_DIR / "engines_gpu.jsonl"
MODEL = "llava-1.5-7b"
POINTS = "2x2048,8x2048"
STEPS = 8
#: (name, method, zero_optimization overrides, extra measure arguments, points, steps). ZeRO-3 runs with LLaVA's
#: zero3.json as is ("auto" = 0.9 h^2 and h^2 elements: 15.1M and 16.8M for h = 4096, less than one 202M-parameter
#: Llama block) and with buckets of 500M elements; the "phases" runs split the last steps into forward, backward and
#: optimizer step; the last two leave gradient checkpointing off.
RUNS = [
    ("zero3", "zero3", {}, [], POINTS, STEPS),
    ("zero3 large buckets", "zero3", {"stage3_prefetch_bucket_size": 500_000_000, "reduce_bucket_size": 500_000_000},
     [], POINTS, STEPS),
    ("fsdp", "fsdp", {}, [], POINTS, STEPS),
    ("zero3 phases", "zero3", {}, ["--phase-steps", "3"], POINTS, 5),
    ("fsdp phases", "fsdp", {}, ["--phase-steps", "3"], POINTS, 5),
    ("zero3 phases, no checkpointing", "zero3", {}, ["--phase-steps", "3", "--no-grad-checkpointing"], "2x2048", 5),
    ("fsdp phases, no checkpointing", "fsdp", {}, ["--phase-steps", "3", "--no-grad-checkpointing"], "2x2048", 5),
]


def add_arguments(p) -> None:
    p.add_argument("--gpus", type=int, required=True, help="processes, one per GPU")
    p.add_argument("--out", required=True, help="JSON-lines file the new records are appended to")
    p.add_argument("--timeout", type=int, default=300, help="seconds per run (default: %(default)s)")


def measure(a, out: Path, skip: set, env: dict, name: str, method: str, zero: dict, extra: list, points: str,
            steps: int) -> None:
    """One of ``RUNS``: ``llava_nb.lab.measure`` under torchrun; its records, or a ``measure error``, appended."""
    if ("measure", a.gpus, name) in skip:
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs.jsonl"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(a.gpus), "-m",
               "llava_nb.lab.measure", "--model", MODEL, "--method", method, "--points", points, "--steps", str(steps),
               "--out", str(runs), *extra]
        for key, value in zero.items():
            cmd += ["--zero", f"{key}={json.dumps(value)}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
        if not runs.exists():
            append(out, {"gpus": a.gpus, "kind": "measure error", "name": name, "stderr": proc.stderr[-4000:]})
            return
        for rec in map(json.loads, runs.read_text().splitlines()):
            append(out, {**rec, "kind": "measure", "name": name})


def tiny(a, out: Path, skip: set, env: dict, base: dict, method: str) -> None:
    """The tiny model's stage 2 with ``method`` on ``a.gpus`` processes, in a fresh cache: its result appended."""
    if ("tiny", a.gpus, method) in skip:
        return
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.run([sys.executable, "-m", "llava_nb", "train", "--model", "tiny-llava-1.5", "--stage", "2",
                               "--method", method, "--num-processes", str(a.gpus), "--set", "log_every=0"],
                              env={**env, "LLAVA_NB_CACHE": cache}, capture_output=True, text=True,
                              timeout=a.timeout)
    if proc.returncode:
        append(out, {**base, "kind": "tiny error", "name": method, "stderr": proc.stderr[-4000:]})
        return
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.pop("eval_examples", None)
    append(out, {**base, "kind": "tiny", "name": method, **result})


def main(a) -> None:
    import torch

    from llava_nb.lab.harness import versions
    from llava_nb.lab.throughput import matmul_tflops

    out = Path(a.out)
    skip = done(DONE, out)
    env = {**os.environ, **ENV}
    base = {"gpus": a.gpus, "versions": versions()}
    if ("matmul", a.gpus, None) not in skip:
        append(out, {**base, "kind": "matmul", "tflops": matmul_tflops(), "n": 8192, "dtype": "bfloat16"})
    for run in RUNS[:5]:
        measure(a, out, skip, env, *run)
    for method in ("zero3", "fsdp"):
        tiny(a, out, skip, env, base, method)
    for run in RUNS[5:]:
        measure(a, out, skip, env, *run)
    torch.cuda.empty_cache()

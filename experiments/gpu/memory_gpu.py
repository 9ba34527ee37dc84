"""The 7B's memory per method on 1, 2 and 4 GPUs (data/measurements/memory_gpu.jsonl).

Measures the full-size llava-1.5-7b architecture (random weights) on GPUs. One call per GPU count, resumable: a
(model, method, gpus, gradient checkpointing) already in ``data/measurements/memory_gpu.jsonl`` (or in ``--out``) is
skipped, so the work can span several sittings on the lent machines. New records are appended to ``--out`` (copy
them into ``memory_gpu.jsonl`` and commit), each run's full output to ``--out`` with the suffix ``.log``::

    python -m experiments.gpu memory_gpu --gpus 1 --methods lora,qlora --out $OUT/memory_gpu.jsonl
    python -m experiments.gpu memory_gpu --gpus 2 --methods zero1,zero2,zero3,fsdp --out $OUT/memory_gpu.jsonl

Each method runs ``python -m llava_nb.lab.measure`` under ``torchrun`` (one process per GPU) at every point; see
``llava_nb/lab/measure.py`` for what is recorded (steady and peak as the memory chapter defines them, out-of-memory
errors, the GPU name and the library versions). A card with more than 80 GB is capped at 79.18 GiB, what an 80 GB
H100 gives, so that the fits/out-of-memory verdicts are the 80 GB ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .common import ENV, MEASUREMENTS_DIR, done

DONE = MEASUREMENTS_DIR / "memory_gpu.jsonl"
KEY = ("model", "method", "gpus", "grad_checkpointing")  # what makes a record done here
MODEL = "llava-1.5-7b"
POINTS = "1x1024,2x2048,8x2048"  # (micro_batch, seq_len); the 576 image tokens count inside seq_len
H100_USABLE_GIB = 79.18


def add_arguments(p) -> None:
    p.add_argument("--gpus", type=int, required=True, help="processes, one per GPU")
    p.add_argument("--methods", required=True, help="comma-separated training methods, e.g. zero3,fsdp")
    p.add_argument("--points", default=POINTS, help="micro_batch x seq_len points (default: %(default)s)")
    p.add_argument("--out", required=True, help="JSON-lines file the new records are appended to")
    p.add_argument("--no-grad-checkpointing", action="store_true")
    p.add_argument("--timeout", type=int, default=240, help="seconds per method")


def command(a, method: str, cap: float | None) -> list[str]:
    """The torchrun command that measures ``method`` at ``a.points``, appending to ``a.out``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(a.gpus), "-m",
           "llava_nb.lab.measure", "--model", MODEL, "--method", method, "--points", a.points, "--out", a.out,
           "--checkpoint-dir", str(a.work / "llava-1.5-7b-random")]
    if cap:
        cmd += ["--cap-gib", str(cap)]
    if a.no_grad_checkpointing:
        cmd.append("--no-grad-checkpointing")
    return cmd


def main(a) -> None:
    import torch

    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    cap = H100_USABLE_GIB if total > 80 else None
    env = {**os.environ, **ENV}
    skip = done(DONE, Path(a.out), key=KEY)
    for method in a.methods.split(","):
        if (MODEL, method, a.gpus, not a.no_grad_checkpointing) in skip:
            print(f"skip {method} on {a.gpus} GPUs: already measured", flush=True)
            continue
        start = time.perf_counter()
        try:
            proc = subprocess.run(command(a, method, cap), env=env, capture_output=True, text=True, timeout=a.timeout)
            rc, log = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            rc, log = "timeout", (err.stdout or b"").decode() + (err.stderr or b"").decode()
        seconds = time.perf_counter() - start
        with open(Path(a.out).with_suffix(".log"), "a") as f:
            f.write(f"\n===== {method} gpus={a.gpus} rc={rc} {seconds:.0f}s\n{log}")
        tail = [line for line in log.splitlines() if line.startswith("{") or "Error" in line][-6:]
        print(f"{method} gpus={a.gpus} rc={rc} {seconds:.0f}s", *tail, sep="\n  ", flush=True)

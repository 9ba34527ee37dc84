"""Measure the full-size llava-1.5-7b architecture (random weights) on GPUs: the memory calculator's ground truth.

One call per GPU count, resumable: a (method, gpus) already in ``memory_gpu.jsonl`` beside this file is skipped, so
the work can span several sittings on the lent machines. New records are appended to ``--out`` (copy them into
``memory_gpu.jsonl`` and commit)::

    python data/measurements/run_gpu.py --gpus 1 --methods lora,qlora --out $OUT/memory_gpu.jsonl
    python data/measurements/run_gpu.py --gpus 2 --methods zero1,zero2,zero3,fsdp --out $OUT/memory_gpu.jsonl

Each method runs ``python -m llava_nb.lab.measure`` under ``torchrun`` (one process per GPU) at every point; see
``llava_nb/measure.py`` for what is recorded (steady and peak as the memory chapter defines them, out-of-memory
errors, the GPU name and the library versions). A card with more than 80 GB is capped at 79.18 GiB, what an 80 GB
H100 gives, so that the fits/out-of-memory verdicts are the 80 GB ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DONE = HERE / "memory_gpu.jsonl"
MODEL = "llava-1.5-7b"
POINTS = "1x1024,2x2048,8x2048"  # (micro_batch, seq_len); the 576 image tokens count inside seq_len
H100_USABLE_GIB = 79.18


def done(path: Path) -> set:
    if not path.exists():
        return set()
    return {(r["method"], r["gpus"], r["grad_checkpointing"]) for r in map(json.loads, path.read_text().splitlines())}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--methods", required=True)
    p.add_argument("--points", default=POINTS)
    p.add_argument("--out", required=True)
    p.add_argument("--no-grad-checkpointing", action="store_true")
    p.add_argument("--timeout", type=int, default=240, help="seconds per method")
    a = p.parse_args()
    import torch

    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    cap = H100_USABLE_GIB if total > 80 else None
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
           "PYTHONUNBUFFERED": "1"}
    skip = done(DONE) | done(Path(a.out))
    for method in a.methods.split(","):
        if (method, a.gpus, not a.no_grad_checkpointing) in skip:
            print(f"skip {method} on {a.gpus} GPUs: already measured", flush=True)
            continue
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(a.gpus), "-m", "llava_nb.lab.measure",
               "--model", MODEL, "--method", method, "--points", a.points, "--out", a.out,
               "--checkpoint-dir", "/tmp/llava-1.5-7b-random"]
        if cap:
            cmd += ["--cap-gib", str(cap)]
        if a.no_grad_checkpointing:
            cmd.append("--no-grad-checkpointing")
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
            rc, log = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            rc, log = "timeout", (err.stdout or b"").decode() + (err.stderr or b"").decode()
        seconds = time.perf_counter() - start
        with open(Path(a.out).with_suffix(".log"), "a") as f:
            f.write(f"\n===== {method} gpus={a.gpus} rc={rc} {seconds:.0f}s\n{log}")
        tail = [line for line in log.splitlines() if line.startswith("{") or "Error" in line][-6:]
        print(f"{method} gpus={a.gpus} rc={rc} {seconds:.0f}s", *tail, sep="\n  ", flush=True)


if __name__ == "__main__":
    main()

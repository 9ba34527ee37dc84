"""ZeRO-3 against FSDP2 on 2 or 4 GPUs: the DeepSpeed and FSDP chapters' training in GPU mode, then the full-size
llava-1.5-7b architecture (random weights) at the same batches, timed.

    python data/gpu/engines_gpu.py --gpus 2 --out $OUT/engines_gpu.jsonl

One call per GPU count, resumable: a step whose record is already in ``engines_gpu.jsonl`` beside this file (or in
``--out``) is skipped. Records (one JSON line each, with the GPU name and library versions):

* ``matmul``: the card's measured bf16 matrix rate (``throughput.matmul_tflops``), the MFU denominator;
* ``tiny``: ``python -m llava_nb train --model tiny-llava-1.5 --stage 2 --method M --num-processes N`` (stage 1
  first, as the CLI does), with its JSON result (losses, engine, accuracy, seconds);
* ``measure``: ``python -m llava_nb.measure`` records of the 7B (step times of ``STEPS`` steps per point, memory,
  holdings), for ZeRO-3 with LLaVA's ``zero3.json`` ("auto" buckets), ZeRO-3 with larger buckets, and FSDP2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DONE = HERE / "engines_gpu.jsonl"
MODEL = "llava-1.5-7b"
POINTS = "2x2048,8x2048"
STEPS = 8
#: ZeRO-3 variants: LLaVA's zero3.json as is ("auto" = 0.9 h^2 and h^2 elements: 15.1M and 16.8M for h = 4096,
#: less than one 202M-parameter Llama block), and buckets of 500M elements, DeepSpeed's own default size class
VARIANTS = {"zero3": {}, "zero3 large buckets": {"stage3_prefetch_bucket_size": 500_000_000,
                                                 "reduce_bucket_size": 500_000_000}}
ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
       "PYTHONUNBUFFERED": "1"}


def done(*paths: Path) -> set:
    keys = set()
    for path in paths:
        if path.exists():
            keys |= {(r["kind"], r["gpus"], r.get("name")) for r in map(json.loads, path.read_text().splitlines())}
    return keys


def append(out: Path, record: dict) -> None:
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: record.get(k) for k in ("kind", "gpus", "name", "tflops", "eval_accuracy", "seconds")}),
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--timeout", type=int, default=300)
    a = p.parse_args()
    import torch

    from llava_nb.measure import versions
    from llava_nb.throughput import matmul_tflops

    out = Path(a.out)
    skip = done(DONE, out)
    env = {**os.environ, **ENV}
    base = {"gpus": a.gpus, "versions": versions()}
    if ("matmul", a.gpus, None) not in skip:
        append(out, {**base, "kind": "matmul", "tflops": matmul_tflops(), "n": 8192, "dtype": "bfloat16"})
    for method in ("zero3", "fsdp"):
        if ("tiny", a.gpus, method) in skip:
            continue
        with tempfile.TemporaryDirectory() as cache:
            proc = subprocess.run([sys.executable, "-m", "llava_nb", "train", "--model", "tiny-llava-1.5", "--stage", "2",
                                   "--method", method, "--num-processes", str(a.gpus), "--set", "log_every=0"],
                                  env={**env, "LLAVA_NB_CACHE": cache}, capture_output=True, text=True,
                                  timeout=a.timeout)
        if proc.returncode:
            print(proc.stderr[-3000:], flush=True)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.pop("eval_examples", None)
        append(out, {**base, "kind": "tiny", "name": method, **result})
    for name, zero in [*VARIANTS.items(), ("fsdp", {})]:
        if ("measure", a.gpus, name) in skip:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            runs = Path(tmp) / "runs.jsonl"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(a.gpus), "-m",
                   "llava_nb.measure", "--model", MODEL, "--method", "fsdp" if name == "fsdp" else "zero3",
                   "--points", POINTS, "--steps", str(STEPS), "--out", str(runs)]
            for key, value in zero.items():
                cmd += ["--zero", f"{key}={json.dumps(value)}"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
            if not runs.exists():
                print(proc.stderr[-3000:], flush=True)
                continue
            for rec in map(json.loads, runs.read_text().splitlines()):
                append(out, {**rec, "kind": "measure", "name": name})
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

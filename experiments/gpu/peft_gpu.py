"""LoRA, QLoRA on one GPU: 7B step times, NF4 layers, paged optimizers (data/gpu/peft_gpu.jsonl).

Step time of the full-size llava-1.5-7b (random weights) with LoRA and QLoRA, why QLoRA is slower, and the
paged-optimizer demonstration of the QLoRA chapter::

    python -m experiments.gpu peft_gpu --out $OUT/peft_gpu.jsonl

Resumable: a record whose (kind, name) is already in ``data/gpu/peft_gpu.jsonl`` (or in ``--out``) is skipped.
Records (one JSON line each, with the GPU name and library versions):

* ``matmul``: the card's measured bf16 matrix rate (``throughput.matmul_tflops``);
* ``measure``: ``python -m llava_nb.lab.measure`` records for LoRA and QLoRA at the memory chapter's points (gradient
  checkpointing on, each GPU capped at an 80 GB H100's 79.18 GiB as there), 8 steps, the last 4 split into forward,
  backward and optimizer step;
* ``linear4bit``: ``quant.linear4bit_timing`` for the 7B's Linear shapes (attention 4096 x 4096, MLP 4096 x 11008 and
  11008 x 4096) at 4096 tokens: bf16 against NF4, and one dequantization;
* ``paged``: ``python -m llava_nb.lab.paged`` for each optimizer, one process each (without ``--evict``: see
  ``paged_probe``);
* ``... error``: a run that failed, with the end of its stderr.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import common
from .common import ENV, GPU_DIR

DONE = GPU_DIR / "peft_gpu.jsonl"
MODEL = "llava-1.5-7b"
POINTS = "1x1024,2x2048,8x2048"  # the memory chapter's points (micro_batch x seq_len, 576 image tokens inside)
H100_USABLE_GIB = 79.18
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (in, out): q/k/v/o, gate/up, down
KEY = ("kind", "name")  # what makes a record done here (one GPU)
append = functools.partial(common.append, show=("kind", "name", "micro_batch", "seq_len", "tflops", "oom"))


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="JSON-lines file the new records are appended to")
    p.add_argument("--timeout", type=int, default=300, help="seconds per measure run (default: %(default)s)")


def paged(out: Path, skip: set, env: dict, base: dict) -> None:
    """``llava_nb.lab.paged`` for each optimizer not yet done, one process each."""
    from llava_nb.lab.paged import OPTIMIZERS

    for name in OPTIMIZERS:
        if ("paged", name) in skip:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            runs = Path(tmp) / "paged.jsonl"
            proc = subprocess.run([sys.executable, "-m", "llava_nb.lab.paged", "--optimizer", name, "--out", str(runs)],
                                  env=env, capture_output=True, text=True, timeout=120)
            if not runs.exists():
                append(out, {**base, "kind": "paged error", "name": name, "stderr": proc.stderr[-4000:]})
                continue
            append(out, {**json.loads(runs.read_text()), "kind": "paged", "name": name})


def measure(a, out: Path, skip: set, env: dict, base: dict, method: str) -> None:
    """``llava_nb.lab.measure`` of the 7B with ``method`` on one GPU, capped at an H100's memory."""
    if ("measure", method) in skip:
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs.jsonl"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m",
               "llava_nb.lab.measure", "--model", MODEL, "--method", method, "--points", POINTS,
               "--steps", "8", "--phase-steps", "4", "--cap-gib", str(H100_USABLE_GIB), "--out", str(runs)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
        if not runs.exists():
            append(out, {**base, "kind": "measure error", "name": method, "stderr": proc.stderr[-4000:]})
            return
        for rec in map(json.loads, runs.read_text().splitlines()):
            append(out, {**rec, "kind": "measure", "name": method})


def main(a) -> None:
    import torch

    from llava_nb.lab.harness import versions
    from llava_nb.lab.quant import linear4bit_timing
    from llava_nb.lab.throughput import matmul_tflops

    out = Path(a.out)
    skip = common.done(DONE, out, key=KEY)
    env = {**os.environ, **ENV}
    base = {"gpus": 1, "versions": versions()}
    paged(out, skip, env, base)  # first: the part the QLoRA chapter needs most
    if ("matmul", None) not in skip:
        append(out, {**base, "kind": "matmul", "tflops": matmul_tflops(), "n": 8192, "dtype": "bfloat16"})
    for shape in SHAPES:
        name = f"{shape[0]}x{shape[1]}"
        if ("linear4bit", name) not in skip:
            append(out, {**base, "kind": "linear4bit", "name": name, **linear4bit_timing(*shape, tokens=4096)})
            torch.cuda.empty_cache()
    for method in ("lora", "qlora"):
        measure(a, out, skip, env, base, method)

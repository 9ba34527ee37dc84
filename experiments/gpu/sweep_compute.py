"""Tiny stage 2: the epochs, lr, batch, weight decay for 90% (data/gpu/sweep_compute.jsonl).

How much stage-2 training the tiny LLaVA-1.5 needs for the 90% target: epochs, learning rate, batch size and
weight decay, on one GPU (the GPU only makes the sweep fast; every run is the CPU recipe's code path)::

    python -m experiments.gpu sweep_compute data/gpu/sweep_compute.jsonl

Each variant trains stage 2 from the cached stage 1 with ``python -m llava_nb train ... --set KEY=VALUE`` in its own
cache folder, four at a time, and appends one JSON line (held-out accuracy by type, blank-image accuracy, steps,
seconds) to the output file. The records in ``sweep_compute.jsonl`` came from four calls on one lent GPU (H100 or
H200) on 2026-11-28; the two ``cpu`` records were run on the 2-core CPU machine with the same command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import append_line

VARIANTS = {
    "18 epochs, lr 1e-3": ["epochs=18"],
    "18 epochs, lr 5e-4": ["epochs=18", "lr=5e-4"],
    "batch 8, lr 2.5e-4": ["batch_size=8", "lr=2.5e-4"],
    "batch 8, lr 5e-4": ["batch_size=8", "lr=5e-4"],
    "batch 16, lr 5e-4": ["batch_size=16", "lr=5e-4"],
    "batch 16, lr 2.5e-4": ["batch_size=16", "lr=2.5e-4"],
    "9 epochs, lr 5e-4": ["epochs=9", "lr=5e-4"],
    "12 epochs, lr 5e-4": ["epochs=12", "lr=5e-4"],
    "18 epochs, lr 5e-4, seed 1": ["epochs=18", "lr=5e-4", "seed=1"],  # seed 1 also draws other data and test set
    "12 epochs, lr 3e-4": ["epochs=12", "lr=3e-4"],
    "6 epochs, lr 5e-4, weight decay 0.1": ["epochs=6", "lr=5e-4", "weight_decay=0.1"],
    "9 epochs, lr 5e-4, weight decay 0.1": ["epochs=9", "lr=5e-4", "weight_decay=0.1"],
    "6 epochs, lr 1e-3, weight decay 0.1": ["epochs=6", "weight_decay=0.1"],
    "9 epochs, lr 1e-3, weight decay 0.1": ["epochs=9", "weight_decay=0.1"],
}


def add_arguments(p) -> None:
    p.add_argument("out", help="JSON-lines file the records are appended to")


def cli_args(settings: list[str]) -> list[str]:
    """``--set KEY=VALUE`` for each setting, but ``--seed N`` for ``seed=N``."""
    args = []
    for kv in settings:
        args += ["--seed", kv.split("=")[1]] if kv.startswith("seed=") else ["--set", kv]
    return args


def run(name: str, work: Path) -> dict:
    d = work / f"sweep_compute-{name}"
    shutil.rmtree(d, ignore_errors=True)
    env = {**os.environ, "LLAVA_NB_CACHE": d, "OMP_NUM_THREADS": "4"}
    start = time.time()
    p = subprocess.run([sys.executable, "-m", "llava_nb", "train", "--model", "tiny-llava-1.5", "--stage", "2",
                        "--set", "log_every=0", *cli_args(VARIANTS[name])], env=env, capture_output=True, text=True)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {"name": name, "settings": VARIANTS[name], "device": "gpu", "acc": r["eval_accuracy"],
            "by_type": r["eval_by_type"], "blank": r["eval_blank_accuracy"], "steps": r["steps"],
            "s": round(time.time() - start)}


def main(a) -> None:
    with ThreadPoolExecutor(4) as ex:
        for res in ex.map(run, VARIANTS, [a.work] * len(VARIANTS)):
            append_line(a.out, res)

"""Tiny stage 2: hyperparameters at the CPU's step budget (data/gpu/sweep_stage2*.json).

A small stage-2 hyperparameter sweep of the tiny LLaVA-1.5 on GPUs, to choose the CPU recipe::

    python -m experiments.gpu sweep_stage2 data/gpu/sweep_stage2.json

Every configuration keeps the number of optimizer steps a 2-core CPU can afford in the 5-minute pipeline budget
(about 750); the GPUs only make the sweep fast. Results: held-out and blank-image accuracy by question type, the
whole file rewritten after each configuration.

    python -m experiments.gpu sweep_stage2 data/gpu/sweep_stage2_image_last.json --image-last

puts ``<image>`` after the question in every record (train and test), so that the image tokens, which attend
causally, can see the question. Without a file, each writes the one named above.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .common import GPU_DIR, NO_MULTICAST

CONFIGS = {
    "default (6 epochs of 3000, lr 1e-3)": {},
    "8 epochs": {"epochs": 8},
    "8 epochs, lr 2e-3": {"epochs": 8, "lr": 2e-3},
    "4 epochs of 6000": {"epochs": 4, "n_images": 6000},
    "8 epochs, lr 5e-4": {"epochs": 8, "lr": 5e-4},
}
#: what ``--image-last`` leaves out
NOT_IMAGE_LAST = ("4 epochs of 6000", "8 epochs, lr 2e-3")


def add_arguments(p) -> None:
    p.add_argument("out", nargs="?", help="JSON file the results are written to (default: data/gpu/sweep_stage2.json, "
                   "or sweep_stage2_image_last.json with --image-last)")
    p.add_argument("--image-last", action="store_true", help="<image> after the question in every record")


def main(a) -> None:
    for var, value in NO_MULTICAST.items():
        os.environ.setdefault(var, value)
    # before llava_nb is imported
    os.environ["LLAVA_NB_CACHE"] = str(a.work / ("sweep_stage2" + ("_image_last" if a.image_last else "")))
    out_file = a.out or GPU_DIR / ("sweep_stage2_image_last.json" if a.image_last else "sweep_stage2.json")
    import torch

    from llava_nb.data import synthetic
    from llava_nb.training.api import train

    configs = dict(CONFIGS)
    if a.image_last:
        synthetic._image_turn = lambda text, rng, image_first=None: f"{text}\n<image>"
        for name in NOT_IMAGE_LAST:
            configs.pop(name)

    n = torch.cuda.device_count()
    rows = {}
    meta = {"image_last": a.image_last}
    for name, hp in configs.items():
        start = time.perf_counter()
        r = train("tiny-llava-1.5", 2, num_processes=n, log_every=0, **hp)
        rows[name] = {"hyperparams": hp, "steps": r["steps"], "seconds": round(time.perf_counter() - start, 1),
                      "eval_accuracy": r["eval_accuracy"], "eval_blank_accuracy": r["eval_blank_accuracy"],
                      "eval_by_type": r["eval_by_type"], "train_loss": r["train_loss"]}
        print(name, json.dumps(rows[name]), flush=True)
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_initialized() else f"{n} GPUs"
        Path(out_file).write_text(json.dumps({**meta, "gpu": gpu, "runs": rows}, indent=1) + "\n")

"""A small stage-2 hyperparameter sweep of the tiny LLaVA-1.5 on GPUs, to choose the CPU recipe.

    python data/gpu/sweep_stage2.py data/gpu/sweep_stage2.json

Every configuration keeps the number of optimizer steps a 2-core CPU can afford in the 5-minute pipeline budget
(about 750); the GPUs only make the sweep fast. Results: held-out and blank-image accuracy by question type.

    python data/gpu/sweep_stage2.py data/gpu/sweep_stage2_image_last.json --image-last

puts ``<image>`` after the question in every record (train and test), so that the image tokens, which attend
causally, can see the question.
"""

import json
import os
import sys
import time
from pathlib import Path

for var, value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(var, value)
IMAGE_LAST = "--image-last" in sys.argv
os.environ["LLAVA_NB_CACHE"] = "/tmp/llava_nb_sweep" + ("_image_last" if IMAGE_LAST else "")

CONFIGS = {
    "default (6 epochs of 3000, lr 1e-3)": {},
    "8 epochs": {"epochs": 8},
    "8 epochs, lr 2e-3": {"epochs": 8, "lr": 2e-3},
    "4 epochs of 6000": {"epochs": 4, "n_images": 6000},
    "8 epochs, lr 5e-4": {"epochs": 8, "lr": 5e-4},
}


def main(out_file):
    import torch

    from llava_nb import synthetic
    from llava_nb.training.api import train

    if IMAGE_LAST:
        synthetic._image_turn = lambda text, rng, image_first=None: f"{text}\n<image>"
        CONFIGS.pop("4 epochs of 6000")
        CONFIGS.pop("8 epochs, lr 2e-3")

    n = torch.cuda.device_count()
    rows = {}
    meta = {"image_last": IMAGE_LAST}
    for name, hp in CONFIGS.items():
        start = time.perf_counter()
        r = train("tiny-llava-1.5", 2, num_processes=n, log_every=0, **hp)
        rows[name] = {"hyperparams": hp, "steps": r["steps"], "seconds": round(time.perf_counter() - start, 1),
                      "eval_accuracy": r["eval_accuracy"], "eval_blank_accuracy": r["eval_blank_accuracy"],
                      "eval_by_type": r["eval_by_type"], "train_loss": r["train_loss"]}
        print(name, json.dumps(rows[name]), flush=True)
        Path(out_file).write_text(json.dumps({**meta, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_initialized()
                                              else f"{n} GPUs", "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main(next((a for a in sys.argv[1:] if not a.startswith("--")), "sweep_stage2.json"))

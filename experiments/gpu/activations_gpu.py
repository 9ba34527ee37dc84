"""One LLM block's saved activations, per method and kernel, on a GPU (data/gpu/activations_gpu.jsonl).

For each model, method, attention kernel and checkpointing mode, ``llava_nb.lab.activations.block_and_rest`` builds
the full-width model with 1 and 2 LLM blocks (random weights, set up as ``train()`` sets the method up), runs one
forward and records the bytes autograd saved (checkpointing off) and the allocator's growth. The difference of the
two builds is one block; the calculator's ``llava_nb.memory.activations`` predicts both. Resumable: a record whose
(model, method, attention, grad_checkpointing, micro_batch, seq_len) is already in the output is skipped::

    python -m experiments.gpu activations_gpu --out $OUT/activations_gpu.jsonl
"""

from __future__ import annotations

import time
from pathlib import Path

from .common import GPU_DIR, append, done

DONE = GPU_DIR / "activations_gpu.jsonl"
KEY = ("model", "method", "attention", "grad_checkpointing", "micro_batch", "seq_len")
MODELS = "llava-1.5-7b:1x1024,llava-1.5-7b:2x2048,llava-v1.6-mistral-7b:1x4096"
METHODS = "zero3,zero3+lora,lora,qlora,ddp"
#: v1.6's image: 672 x 672 is a 2 x 2 grid, 2,880 image tokens (of 4,096)
V16_IMAGE = (672, 672)


def add_arguments(p) -> None:
    p.add_argument("--models", default=MODELS, help="model:micro_batchxseq_len points (default: %(default)s)")
    p.add_argument("--methods", default=METHODS, help="default: %(default)s")
    p.add_argument("--attention", default="sdpa,eager")
    p.add_argument("--out", required=True, help="JSON-lines file the new records are appended to")


def main(a) -> None:
    import torch

    from llava_nb.lab.activations import block_and_rest
    from llava_nb.lab.harness import versions
    from llava_nb.models.architectures import get_config

    skip = done(DONE, Path(a.out), key=KEY)
    for point in a.models.split(","):
        model, _, shape = point.partition(":")
        micro_batch, seq_len = map(int, shape.split("x"))
        config = get_config(model)
        image = V16_IMAGE if "v1.6" in model else None
        for method in a.methods.split(","):
            for attention in a.attention.split(","):
                for ckpt in (False, True):
                    key = (model, method, attention, ckpt, micro_batch, seq_len)
                    if key in skip:
                        continue
                    start = time.perf_counter()
                    record = dict(zip(KEY, key), image_size=image)
                    try:
                        record.update(block_and_rest(config, method, micro_batch, seq_len, device="cuda",
                                                     attention=attention, gradient_checkpointing=ckpt,
                                                     image_size=image))
                    except Exception as err:  # one failing set-up must not end the sweep: record it
                        record["error"] = f"{type(err).__name__}: {err}"[:400]
                    torch.cuda.empty_cache()
                    record.update(seconds=round(time.perf_counter() - start, 1), versions=versions())
                    append(a.out, record, show=KEY + ("saved", "allocated", "error", "seconds"))

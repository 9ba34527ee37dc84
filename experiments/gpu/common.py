"""What the GPU experiments share: the data folders, the NCCL settings of shared machines, and JSON-lines records.

The folders are found from this file (the repository root is two levels up), not from ``llava_nb.paths``: importing
``llava_nb`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK`` and fixes ``paths.CACHE_DIR``, and ``tiny_pipeline_gpus`` and
``sweep_stage2`` must set ``LLAVA_NB_CACHE`` (and probe CUDA) before that happens.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
GPU_DIR = DATA_DIR / "gpu"  # every experiment's records but memory_gpu's
MEASUREMENTS_DIR = DATA_DIR / "measurements"  # memory_gpu.jsonl: the memory calculator's ground truth
PRETRAINED_DIR = DATA_DIR / "pretrained"  # the committed tiny ViT and LLM

#: NVLink multicast stays off on shared machines (it can take a host's GPUs down).
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
#: The environment of the processes the experiments start: no multicast, output unbuffered.
ENV = {**NO_MULTICAST, "PYTHONUNBUFFERED": "1"}


def done(*paths: Path, key: tuple = ("kind", "gpus", "name")) -> set:
    """The ``key`` fields of every record already in ``paths`` (those that exist): what a resumed call skips."""
    keys = set()
    for path in map(Path, paths):
        if path.exists():
            keys |= {tuple(r.get(k) for k in key) for r in map(json.loads, path.read_text().splitlines())}
    return keys


SHOW = ("kind", "gpus", "name", "tflops", "eval_accuracy", "seconds")


def append(out: Path, record: dict, show: tuple = SHOW) -> None:
    """Append ``record`` to ``out`` as one JSON line and print its ``show`` fields."""
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: record.get(k) for k in show}), flush=True)


def append_line(out: str | Path, record: dict) -> None:
    """Print ``record`` and append it to ``out`` as one JSON line (the sweeps' output)."""
    print(json.dumps(record), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")

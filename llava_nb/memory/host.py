"""Host memory (pure Python): what a machine's RAM holds, beside its GPUs, for ZeRO-3 offload and for loading.

**ZeRO-3 offload** (LLaVA's ``zero3_offload.json``: parameters and optimizer offloaded to the CPU, pinned), per rank,
from DeepSpeed 0.19's code (``deepspeed/runtime/zero/``) and torch's AdamW:

==============================  ===========================================  ========================================
term                            bytes                                        where
==============================  ===========================================  ========================================
parameter partitions (pinned)   sum over every parameter of pow2(2 part(p))  partition_parameters.py:1836-1843
flat bf16 parameters (pinned)   pow2(2 part(T))                              stage3.py:888-906
flat bf16 gradients (pinned)    pow2(2 part(T))                              stage3.py:791-795 (grad_accum_dtype is
                                                                             the model's bf16: engine.py:1806-1807)
fp32 gradients (pinned)         sum over sub-groups of pow2(4 s)             stage3.py:1336-1338
fp32 master weights             4 part(T)                                    stage3.py:1156-1158 (not pinned)
AdamW moments                   8 part(T), from the first step on            torch's AdamW state
AdamW temporaries (the step)    8 max(s)                                     torch's single-tensor Adam: the sqrt of
                                                                             exp_avg_sq and its quotient
==============================  ===========================================  ========================================

Pinned memory comes from PyTorch's caching host allocator, which rounds every allocation up to a power of two
(``pow2``; ``ATen/core/CachingHostAllocator.h``) and keeps freed blocks for reuse, so a 4.4 GB buffer holds 8.6 GB of
RAM, and the per-parameter partitions DeepSpeed first pins stay resident after they move into the flat buffer.
Sub-groups ``s`` are DeepSpeed's: parameters in order, a group closed once it reaches ``sub_group_size``
(stage3.py:1210-1233). One node holds the partitions of all its ranks. ``tests/test_host.py`` checks these terms
against the resident memory measured on an H200 (``data/gpu/host_gpu.jsonl``).

**Loading a checkpoint** (``from_pretrained`` of safetensors files). The files are memory-mapped and the pages read
stay resident while they are mapped: up to the checkpoint's size on disk. Loading onto the CPU adds the model itself,
``P x bytes`` in the dtype asked for; loading onto a GPU copies each tensor over and keeps nothing else.

Both come on top of what every training process holds before its model: Python, torch, transformers and, on a GPU,
the CUDA context (``baseline`` in the data).
"""

from __future__ import annotations

import math


def pow2(nbytes: int) -> int:
    """What PyTorch's caching host allocator reserves for a pinned allocation: the next power of two."""
    return 1 << (nbytes - 1).bit_length() if nbytes > 0 else 0


def sub_groups(numels, sub_group_size: int) -> list[int]:
    """DeepSpeed ZeRO-3's sub-groups of the trained partitions: parameters in order, a group closed once it holds
    ``sub_group_size`` elements or more (one group if everything fits in one)."""
    numels = list(numels)
    if sub_group_size >= sum(numels):
        return [sum(numels)] if numels else []
    groups, current = [], 0
    for i, n in enumerate(numels):
        current += n
        if current >= sub_group_size or i == len(numels) - 1:
            groups.append(current)
            current = 0
    return groups


def offload_host_terms(sizes, gpus: int, sub_group_size: int = 10**9, persistence_threshold: int = 0) -> dict:
    """Bytes of one node's host memory under ZeRO-3 offload with ``gpus`` ranks on it, by term (this module's
    table), at the optimizer step; ``sizes`` are ``(trains, shape)`` of every parameter in the model's order
    (``shapes.method_sizes``). Parameters below ``persistence_threshold`` elements stay on the GPU."""
    parts = [(t, math.ceil(math.prod(s) / gpus), math.prod(s)) for t, s in sizes]
    trained = [p for t, p, _ in parts if t]
    part_t = sum(trained)
    groups = sub_groups(trained, sub_group_size)
    rank = {"parameter partitions (pinned)": sum(pow2(2 * p) for _, p, n in parts if n >= persistence_threshold),
            "flat bf16 parameters (pinned)": pow2(2 * part_t), "flat bf16 gradients (pinned)": pow2(2 * part_t),
            "fp32 gradients (pinned)": sum(pow2(4 * g) for g in groups), "fp32 master weights": 4 * part_t,
            "AdamW moments": 8 * part_t, "AdamW temporaries (the step)": 8 * max(groups, default=0)}
    return {k: gpus * v for k, v in rank.items()}


def load_host_terms(checkpoint_bytes: int, params: int, device: str, dtype_bytes: int = 2) -> dict:
    """Bytes a process adds to its host memory while ``from_pretrained`` loads a checkpoint of ``checkpoint_bytes``
    on disk holding ``params`` parameters onto ``device`` ("cpu" or a GPU) in a dtype of ``dtype_bytes``."""
    terms = {"checkpoint pages (memory-mapped)": checkpoint_bytes}
    if device == "cpu":
        terms["the model itself"] = params * dtype_bytes
    return terms

"""Host memory (pure Python): what a machine's RAM holds, beside its GPUs, for ZeRO-3 offload and for loading.

**ZeRO-3 offload** (LLaVA's ``zero3_offload.json``: parameters and optimizer offloaded to the CPU, pinned). Each rank
keeps on the host its partition of the bf16 weights, ``2 part(P)``, and for its partition of the trained parameters
the fp32 master weights ``4 part(T)``, the fp32 gradients ``4 part(T)`` and AdamW's two moments ``8 part(T)``; torch's
AdamW, stepping on the CPU one sub-group at a time, adds a temporary of ``4 min(sub_group_size, part(T))``. One node
holds the partitions of all its ranks, so more GPUs on a node cut the same bytes into more pieces:
``N x (2 part(P) + 16 part(T))`` is about ``2P + 16T`` whatever N is.

**Loading a checkpoint** (``from_pretrained`` of safetensors files). The files are memory-mapped and the pages read
stay resident while they are mapped: up to the checkpoint's size on disk. Loading onto the CPU adds the model itself,
``P x bytes`` in the dtype asked for; loading onto a GPU copies each tensor over and keeps nothing else.

Both come on top of what every training process holds before its model: Python, torch, transformers and, on a GPU,
the CUDA context (``data/gpu/host_gpu.jsonl`` measures it: ``baseline``).
"""

from __future__ import annotations

from ..methods.counts import sized_numel  # noqa: F401 (the counts the terms below rest on)
from .formulas import zero3_partition


def offload_host_terms(sizes, gpus: int, sub_group_size: int = 10**9) -> dict:
    """Bytes of one node's host memory under ZeRO-3 offload with ``gpus`` ranks on it, by term; ``sizes`` are
    ``(trains, shape)`` of every parameter (``shapes.method_sizes``)."""
    part_p = zero3_partition(sizes, gpus, trainable_only=False)
    part_t = zero3_partition(sizes, gpus, trainable_only=True)
    return {"bf16 weights": gpus * 2 * part_p, "fp32 master weights": gpus * 4 * part_t,
            "fp32 gradients": gpus * 4 * part_t, "AdamW moments": gpus * 8 * part_t,
            "AdamW temporary (one sub-group)": gpus * 4 * min(sub_group_size, part_t)}


def load_host_terms(checkpoint_bytes: int, params: int, device: str, dtype_bytes: int = 2) -> dict:
    """Bytes a process adds to its host memory while ``from_pretrained`` loads a checkpoint of ``checkpoint_bytes``
    on disk holding ``params`` parameters onto ``device`` ("cpu" or a GPU) in a dtype of ``dtype_bytes``."""
    terms = {"checkpoint pages (memory-mapped)": checkpoint_bytes}
    if device == "cpu":
        terms["the model itself"] = params * dtype_bytes
    return terms

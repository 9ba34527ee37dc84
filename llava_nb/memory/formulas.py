"""The per-method terms of the memory calculator (pure Python): the ZeRO paper's model states, DeepSpeed's
estimators, and the measured recipes' persistent and transient bytes, with the partition arithmetic behind them.

Symbols: P all parameters, T the trainable ones (stage 2: the ViT frozen), N the GPUs, h the LLM width, i its MLP
width, L its layers, V the vocabulary, r LoRA's rank, ``part(x)`` this rank's share of x. ``estimate.py``'s
docstring tabulates the terms of ``measured_terms``; ``estimate_memory`` adds them up.
"""

from __future__ import annotations

import math

from ..errors import UnknownMethodError
from ..methods.counts import sized_numel
from ..methods.registry import DTYPE_BYTES
from .activations import (Block, block_constant, block_terms, checkpointed_bytes, compute_of, fp32_stream,
                          vit_block_constant, vit_block_terms, vit_stream)
from .host import offload_host_terms
from .shapes import Shapes, method_sizes

PAPER_K = 12
NF4_BITS = 4
#: bytes per parameter of a 4-bit weight's constants: blocksize-64 absmax quantised to 8 bits, plus fp32 second-level
#: constants per 256 blocks (QLoRA, sec. 2: 8/64 + 32/(64*256) bits)
DOUBLE_QUANT_BYTES = (8 / 64 + 32 / (64 * 256)) / 8


# ---------------------------------------------------------------- how each engine splits parameters over N ranks

def zero12_partition(numel: int, gpus: int) -> int:
    """DeepSpeed ZeRO-1/2: the flat group is padded to a multiple of 2 x gpus, then split evenly:
    ``ceil(numel / 2N) * 2N / N`` elements per rank."""
    align = 2 * gpus
    return math.ceil(numel / align) * align // gpus


def zero3_partition(sizes, gpus: int, trainable_only: bool) -> int:
    """DeepSpeed ZeRO-3 partitions each parameter separately: ``sum of ceil(numel / N)`` elements per rank."""
    return sum(math.ceil(math.prod(s) / gpus) for t, s in sizes if t or not trainable_only)


def fsdp_shard(sizes, gpus: int, trainable_only: bool, rank: int = 0) -> int:
    """FSDP2 chunks dim 0 of each parameter like ``torch.chunk``: ceil(dim0 / gpus) rows per rank, the last ranks
    get what is left (possibly nothing). Rank 0 is the busiest."""
    total = 0
    for t, s in sizes:
        if trainable_only and not t:
            continue
        dim0 = s[0] if s else 1
        step = math.ceil(dim0 / gpus)
        rows = max(0, min(step, dim0 - rank * step))
        total += rows * math.prod(s[1:])
    return total


# ---------------------------------------------------------------- the ZeRO paper and DeepSpeed's estimators

def paper_terms(psi: int, method: str, gpus: int, fp32_grads: bool = False) -> dict:
    """The ZeRO paper's model states; ``fp32_grads`` adds the 4 Psi of an fp32 gradient-accumulation buffer (the
    Ultra-Scale Playbook's 140 GB for 7B), unsharded for ddp/zero1 and sharded otherwise."""
    parts = paper_states(psi, method, gpus)
    if fp32_grads:
        parts["fp32_gradients"] = 4 * psi / (gpus if method in ("zero2", "zero3", "fsdp") else 1)
    return parts


def paper_states(psi: int, method: str, gpus: int) -> dict:
    """Rajbhandari et al. 2019, sec. 3, K = 12: weights 2 Psi, gradients 2 Psi, optimizer states K Psi, each
    divided by N from the stage that shards it on (ZeRO-1: optimizer, 2: + gradients, 3 and FSDP: + weights)."""
    k = PAPER_K
    if method == "ddp":
        return {"weights": 2 * psi, "gradients": 2 * psi, "optimizer_states": k * psi}
    if method == "zero1":
        return {"weights": 2 * psi, "gradients": 2 * psi, "optimizer_states": k * psi / gpus}
    if method == "zero2":
        return {"weights": 2 * psi, "gradients": 2 * psi / gpus, "optimizer_states": k * psi / gpus}
    if method in ("zero3", "fsdp"):
        return {"weights": 2 * psi / gpus, "gradients": 2 * psi / gpus, "optimizer_states": k * psi / gpus}
    raise UnknownMethodError(f"the ZeRO paper's formula covers ddp, zero1, zero2, zero3 (and fsdp, which shards like "
                             f"ZeRO-3), not {method!r}; use accounting='measured'")


def deepspeed_terms(total_params: int, largest_layer_params: int, method: str, gpus_per_node: int = 1,
                    nodes: int = 1, buffer_factor: float = 1.5) -> tuple[dict, int]:
    """The terms of DeepSpeed's model-state estimators: (GPU bytes by term, CPU bytes per node).

    ``zero2`` is ``estimate_zero2_model_states_mem_needs(cpu_offload=False)``, ``zero3`` is
    ``estimate_zero3_model_states_mem_needs(cpu_offload=False)`` and ``zero3-offload`` the same with optimizer and
    parameter offload (``zero_init=True``). DeepSpeed has no estimator for stage 0 or 1.
    """
    p, total_gpus = total_params, gpus_per_node * nodes
    if method == "zero2":
        gpu = {"params_16bit": 2 * p, "grads_16bit+grads_32bit+params_32bit+adam (18 P / N)": int(18 * p / total_gpus)}
        return gpu, int(p * 4 * gpus_per_node * buffer_factor)
    if method == "zero3":
        gpu = {"largest_layer (4 x params)": 4 * largest_layer_params,
               "params+grads+master+adam (18 P / N)": int(18 * p / total_gpus)}
        return gpu, int(largest_layer_params * 4 * gpus_per_node * buffer_factor)
    if method == "zero3-offload":
        return {"largest_layer (4 x params)": 4 * largest_layer_params}, int(p * 18 * (1 / nodes) * buffer_factor)
    raise UnknownMethodError(f"DeepSpeed ships estimators for ZeRO-2 and ZeRO-3 only; accounting='deepspeed' cannot "
                             f"describe {method!r}. Use 'measured', or method zero2/zero3/zero3-offload")


# ---------------------------------------------------------------- the measured recipes

def activation_bytes_per_token(shapes: Shapes, method, grad_checkpointing: bool, attention: str = "sdpa",
                               seq_len: int = 0) -> dict:
    """What the forward keeps for backward (``activations.py``, from the architecture): ``blocks`` (bytes per token,
    all L blocks: every saved tensor, or with checkpointing each block's input), ``one_block`` (one block
    recomputed in backward; 0 without checkpointing), ``logits`` (the loss phase: 14 V, or 16 V for QLoRA's fp32
    stream) and the per-token-free bytes ``blocks_fixed`` / ``one_block_fixed`` (autocast's bf16 weight copies)."""
    block = Block(shapes.hidden, shapes.intermediate, shapes.heads, shapes.kv_heads, shapes.head_dim)
    compute = compute_of(method)
    per_block = sum(block_terms(block, compute, attention, seq_len, shapes.lora_r).values())
    fixed = block_constant(block, compute, shapes.lora_r, attention)
    L = shapes.layers
    logits = (16 if fp32_stream(method) else 14) * shapes.vocab
    if grad_checkpointing:  # autocast's weight cache lives until the forward ends, checkpointed or not
        return {"blocks": L * checkpointed_bytes(block, compute), "one_block": per_block, "logits": logits,
                "blocks_fixed": L * fixed, "one_block_fixed": fixed}
    return {"blocks": L * per_block, "one_block": 0, "logits": logits, "blocks_fixed": L * fixed,
            "one_block_fixed": 0}


def _zero12_terms(sizes, stage: int, gpus: int, one_block: int, bucket: int) -> tuple:
    """(persistent, end of backward, optimizer step) of ZeRO-1/2: bf16 weights, fp32 master and AdamW states of
    this rank's partition of the T trained parameters."""
    P, T = sized_numel(sizes), sized_numel(sizes, True)
    part = zero12_partition(T, gpus)
    persistent = {"weights": 2 * P, "master_weights": 4 * part, "optimizer_states": 8 * part,
                  "comm_buffers": 2 * 2 * bucket}
    # ZeRO-1 keeps every bf16 gradient until the step; ZeRO-2 reduces them into its bf16 partition.
    end = {"gradients": 2 * T if stage == 1 else 2 * part, "activations": one_block}
    step = {"gradients": 4 * part, "optimizer_temporaries": 4 * part}
    return persistent, end, step


def _zero3_terms(shapes: Shapes, sizes, offload: bool, gpus: int, one_block: int, options: dict) -> tuple:
    """(persistent, end of backward, optimizer step, cpu bytes) of ZeRO-3, with or without offload."""
    h = shapes.hidden
    bucket = options.get("reduce_bucket_size", h * h)
    part = zero3_partition(sizes, gpus, trainable_only=True)
    weights = 2 * zero3_partition(sizes, gpus, trainable_only=False)
    threshold = options.get("stage3_param_persistence_threshold", 10 * h)
    small = sum(math.prod(s) for _, s in sizes if math.prod(s) < threshold)
    sub = min(int(options.get("sub_group_size", 1e9)), part)
    layer = 2 * shapes.largest_layer  # bf16 gathered: the largest module (embeddings / lm_head)
    if offload:
        persistent = {"weights": 2 * small, "comm_buffers": 2 * 2 * bucket}
        end = {"gradients": 2 * bucket, "gathered_params": 2 * layer, "activations": one_block}
        step = {"gathered_params": 0}
        host = offload_host_terms(sizes, gpus, int(options.get("sub_group_size", 1e9)), threshold)
        return persistent, end, step, sum(host.values())
    persistent = {"weights": weights + 2 * small, "master_weights": 4 * part, "optimizer_states": 8 * part,
                  "gradient_buffer": 2 * part, "comm_buffers": 2 * 2 * bucket}
    end = {"gathered_params": 2 * layer, "activations": one_block}
    step = {"gradients": 4 * sub, "optimizer_temporaries": 4 * sub}
    return persistent, end, step, 0


def _fsdp_terms(shapes: Shapes, sizes, method, gpus: int, one_block: int, rank: int) -> tuple:
    """(persistent, end of backward, optimizer step) of FSDP2 with fp32 shards (also the master weights), on
    ``rank``. Under QLoRA the LLM's 4-bit Linears stay whole on every rank (Accelerate leaves bitsandbytes' packed
    uint8 weights out of ``fully_shard``), in NF4 as ``_frozen_bytes`` counts them; the rest is sharded."""
    params = 4 * fsdp_shard(sizes, gpus, trainable_only=False, rank=rank)
    if method.adapter.quantized:
        params += (int(shapes.llm_linear * (NF4_BITS / 8 + DOUBLE_QUANT_BYTES))
                   - 4 * fsdp_shard(shapes.llm_linear_sizes, gpus, trainable_only=False, rank=rank))
    part = fsdp_shard(sizes, gpus, trainable_only=True, rank=rank)
    persistent = {"weights": params, "optimizer_states": 8 * part}
    end = {"gradients": 4 * part, "activations": one_block}
    step = {"gradients": 4 * part, "optimizer_temporaries": 4 * part}
    return persistent, end, step


def _frozen_bytes(shapes: Shapes, sizes, method) -> int:
    """Bytes of what does not train, in the dtype the method keeps it (``Method.states``): the ViT in fp32 under
    DDP, a LoRA base in the compute dtype, QLoRA's LLM Linears in NF4 (4 bits plus double-quantized constants)
    with everything else cast to fp32 by ``prepare_model_for_kbit_training``."""
    frozen = sized_numel(sizes, False)
    states = method.states("bf16")
    if states.frozen == "nf4":
        quantized = shapes.llm_linear
        return int(quantized * (NF4_BITS / 8 + DOUBLE_QUANT_BYTES)) + 4 * (frozen - quantized)
    return int(DTYPE_BYTES[states.frozen or "float32"] * frozen)


def _ddp_terms(shapes: Shapes, sizes, method, gpus: int, one_block: int) -> tuple:
    """(persistent, end of backward, optimizer step) of torch DDP: the T trained parameters in fp32 (they are the
    master weights; bf16 by autocast), fp32 gradients and AdamW states; the frozen ones as ``_frozen_bytes``."""
    trained = 4 * sized_numel(sizes, True)
    persistent = {"weights": _frozen_bytes(shapes, sizes, method) + trained, "optimizer_states": 2 * trained}
    if gpus > 1:
        persistent["gradient_buffer"] = trained  # DDP's buckets hold every gradient between steps
        return persistent, {"activations": one_block}, {"optimizer_temporaries": trained}
    end = {"gradients": trained, "activations": one_block}
    step = {"gradients": trained, "optimizer_temporaries": trained}
    return persistent, end, step


def vit_activation_bytes(method, grad_checkpointing: bool, attention: str, vision: dict) -> tuple[int, int]:
    """(all the trained ViT's layers, one layer recomputed) in bytes: ``vision`` holds its ``block``
    (``activations.VitBlock``), the ``layers`` the features come from, the micro-batch's patch ``tokens`` and the
    ``view_tokens`` of one image view."""
    block, compute = vision["block"], compute_of(method)
    per_token = sum(vit_block_terms(block, compute, attention, vision["view_tokens"]).values())
    fixed = vit_block_constant(block, compute, attention)
    layers, tokens = vision["layers"], vision["tokens"]
    if grad_checkpointing:
        return layers * (vit_stream(compute) * block.hidden * tokens + fixed), per_token * tokens + fixed
    return layers * (per_token * tokens + fixed), 0


def measured_terms(shapes: Shapes, method, gpus: int, tokens: int, grad_checkpointing: bool,
                   options: dict, seq_len: int = 0, vision: dict | None = None) -> tuple:
    """(persistent, phases, cpu bytes) of ``method`` (a ``methods.registry.Method``) as ``train()`` sets it up;
    phases map a name ("loss", "end of backward", "optimizer step") to its transient components. ``tokens`` =
    micro-batch x sequence length. The parameters held, and which of them train, are ``method_sizes``; with
    ``vision`` (``vit_activation_bytes``) the ViT trains too."""
    attention = options.get("attention", "sdpa")
    act = activation_bytes_per_token(shapes, method, grad_checkpointing, attention, seq_len)
    blocks = act["blocks"] * tokens + act["blocks_fixed"]
    one_block = act["one_block"] * tokens + act["one_block_fixed"]
    if vision:  # the ViT's backward runs last: its recomputed layer, not the LLM's, is live at the very end
        vit_blocks, vit_one = vit_activation_bytes(method, grad_checkpointing, attention, vision)
        blocks, one_block = blocks + vit_blocks, max(one_block, vit_one)
    logits = act["logits"] * tokens
    sizes = method_sizes(shapes, method, unfreeze_vision=bool(vision))
    engine, cpu = method.engine, 0
    if engine.kind == "deepspeed" and engine.zero_stage == 3:
        persistent, end, step, cpu = _zero3_terms(shapes, sizes, engine.offload, gpus, one_block, options)
    elif engine.kind == "deepspeed":
        bucket = options.get("reduce_bucket_size", shapes.hidden * shapes.hidden)
        persistent, end, step = _zero12_terms(sizes, engine.zero_stage, gpus, one_block, bucket)
    elif engine.kind == "fsdp":
        persistent, end, step = _fsdp_terms(shapes, sizes, method, gpus, one_block, options.get("rank", 0))
    else:
        persistent, end, step = _ddp_terms(shapes, sizes, method, gpus, one_block)
    phases = {"loss": {"activations": blocks, "logits_and_loss": logits}, "end of backward": end,
              "optimizer step": step}
    return persistent, phases, cpu

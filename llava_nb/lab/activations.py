"""What one forward keeps for backward, measured two ways.

* **Saved tensors**: after the forward, walk the autograd graph from the loss and add up the bytes of every tensor
  a node saved for backward (``node._saved_*``), each storage once, parameters excluded. This is what autograd
  itself holds: exact on any device, and the reference the calculator's activation terms
  (``llava_nb.memory.activations``) are tested against on a CPU.
* **The allocator** (GPUs): ``torch.cuda.memory_allocated()`` after the forward minus before. It also counts what
  no node saves but the forward leaves alive (the returned logits, autocast's cached weight casts, checkpointed
  blocks' inputs) and the kernels' own layout; with gradient checkpointing on it is the only measure (walking a
  checkpointed graph would recompute it).

A LLaVA model with ``layers`` LLM blocks is built with random weights, set up exactly as ``train()`` sets a method
up (``methods.setup``: dtypes, freezing, peft's adapters, checkpointing; torch DDP's bf16 autocast for the ``ddp``
engine), and runs one forward of a synthetic batch. Two builds that differ only in their number of blocks give one
block's bytes (the difference) and everything outside the blocks (the rest).
"""

from __future__ import annotations

import copy
import tempfile

import torch

from ..methods.registry import get_method
from ..methods.setup import load_kwargs, setup_model
from .harness import synthetic_batch


def saved_tensor_bytes(output: torch.Tensor, exclude: set[int] | None = None) -> tuple[int, dict]:
    """(bytes, bytes by node name) of the tensors saved by ``output``'s graph, each storage counted once;
    storages whose ``data_ptr`` is in ``exclude`` (the parameters) are skipped."""
    exclude = exclude or set()
    seen_nodes, storages, by_node, stack = set(), {}, {}, [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen_nodes:
            continue
        seen_nodes.add(node)
        values = [getattr(node, attr) for attr in dir(node) if attr.startswith("_saved_")]
        if hasattr(node, "saved_tensors"):  # a Python autograd.Function's ctx.save_for_backward
            values.append(node.saved_tensors)
        for value in values:
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if not isinstance(t, torch.Tensor):
                    continue
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in exclude or key in storages:
                    continue
                storages[key] = storage.nbytes()
                by_node[node.name()] = by_node.get(node.name(), 0) + storage.nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return sum(storages.values()), by_node


def _with_layers(config, layers: int, part: str = "llm"):
    """``config`` with ``layers`` blocks in the LLM (``part="llm"``) or the ViT (``"vit"``)."""
    config = copy.deepcopy(config)
    sub = config.text_config if part == "llm" else config.vision_config
    sub.num_hidden_layers = layers
    if getattr(sub, "layer_types", None):
        sub.layer_types = sub.layer_types[:layers]
    return config


def _build(config, method, device, gradient_checkpointing: bool, attention: str, seed: int,
           unfreeze_vision: bool = False):
    """The model as ``train()`` sets ``method`` up; QLoRA's 4-bit base goes through ``from_pretrained``."""
    from ..models.architectures import build_model, load_model

    kwargs = load_kwargs(method, "bf16")
    if method.adapter.quantized:
        with tempfile.TemporaryDirectory() as folder:
            build_model(config, device=device, dtype=torch.bfloat16, seed=seed).save_pretrained(folder)
            model = load_model(folder, device_map={"": device}, **kwargs)
    else:
        model = build_model(config, device=device, dtype=kwargs.get("dtype", torch.float32), seed=seed)
    return setup_model(model, method, mixed_precision="bf16", gradient_checkpointing=gradient_checkpointing,
                       attn_implementation=attention, unfreeze_vision=unfreeze_vision)


def forward_bytes(config, method: str, micro_batch: int, seq_len: int, device="cpu", attention: str = "sdpa",
                  gradient_checkpointing: bool = False, image_size=None, seed: int = 0, walk: bool = True,
                  deepspeed_linear: bool = False, unfreeze_vision: bool = False) -> dict:
    """One training-mode forward of ``config`` set up for ``method``: ``saved`` (the saved tensors' bytes, when
    ``walk`` and checkpointing is off), ``saved_by_node``, ``allocated`` (the allocator's growth; GPUs only) and
    ``logits`` (the returned logits' bytes, alive in ``allocated`` but saved by no node). ``deepspeed_linear`` runs
    it with ``torch.nn.functional.linear`` replaced as ``deepspeed.initialize`` replaces it under ZeRO-3 (the model
    itself is not wrapped)."""
    method = get_method(method)
    device = torch.device(device)
    model = _build(config, method, device, gradient_checkpointing, attention, seed, unfreeze_vision)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    buffers = {b.untyped_storage().data_ptr() for b in model.buffers()}
    dtype = torch.bfloat16 if method.engine.kind == "deepspeed" else torch.float32
    batch = synthetic_batch(model.config, micro_batch, seq_len, device, dtype, image_size=image_size, seed=seed)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
    linear = torch.nn.functional.linear
    if deepspeed_linear:
        from deepspeed.runtime.zero.linear import zero3_linear_wrap

        torch.nn.functional.linear = zero3_linear_wrap
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=method.engine.kind == "ddp"):
            out = model(**batch)
    finally:
        torch.nn.functional.linear = linear
    record = {"logits": out.logits.untyped_storage().nbytes()}
    if cuda:
        torch.cuda.synchronize(device)
        record["allocated"] = torch.cuda.memory_allocated(device) - before
    if walk and not gradient_checkpointing:
        record["saved"], record["saved_by_node"] = saved_tensor_bytes(out.loss, params | buffers)
    del out, model
    return record


def block_and_rest(config, method: str, micro_batch: int, seq_len: int, layers=(1, 2), part: str = "llm",
                   **kwargs) -> dict:
    """``forward_bytes`` of two builds with ``layers`` blocks in ``part`` ("llm" or "vit"): ``block`` is one block's
    bytes (their difference over the difference in blocks), ``rest`` what is outside those blocks."""
    (few, f), (many, m) = [(n, forward_bytes(_with_layers(config, n, part), method, micro_batch, seq_len, **kwargs))
                           for n in layers]
    out = {"layers": list(layers), "records": [f, m]}
    for key in ("saved", "allocated"):
        if key in f and key in m:
            block = (m[key] - f[key]) / (many - few)
            out[key] = {"block": block, "rest": f[key] - few * block}
    return out


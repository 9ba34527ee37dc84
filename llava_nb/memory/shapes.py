"""``Shapes``: what the memory arithmetic needs from a model, computed from its config numbers (no torch).

Every count comes from ``llava_nb.models.layout``, which lists each parameter tensor of the transformers model
(in ``model.parameters()`` order) from a ``ModelSpec`` or a transformers config; ``tests/test_shapes.py`` checks
each field against the model built on the meta device. With the ViT frozen (stage 2):

    total = P = vision + projector + image_newline + LLM + lm_head      trainable = T = P - vision
    llm_linear = sum of the LLM blocks' Linear weights (what QLoRA quantises)
    adapter = sum over every Linear (in -> out) of the LLM of r (in + out)   (LLaVA's LoRA, r = lora_r)
    largest_layer = max over modules of the parameters the module owns directly (DeepSpeed's ``largest_layer``)
    persistent_small = parameters of the tensors below ZeRO-3's persistence threshold, 10 h elements
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ..methods.counts import sized_numel, trained_sizes
from ..models.layout import Numbers, owners_of, read_numbers


@dataclass(frozen=True)
class Shapes:
    """What the arithmetic needs from a model."""

    name: str
    total: int              # P: every parameter
    vision: int             # the ViT (frozen)
    trainable: int          # T: stage 2 (projector + LLM + lm_head)
    projector: int          # projector + image_newline
    embed: int              # input embeddings
    lm_head: int
    llm_linear: int         # parameters in the LLM blocks' Linear layers (what QLoRA quantises)
    adapter: int            # LLaVA's LoRA adapters (r=128) on those Linears
    largest_layer: int      # DeepSpeed's: the most parameters one module owns directly
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    lora_r: int
    sizes: tuple            # every parameter's shape, for padding and sharding (trainable flag, shape)
    persistent_small: int   # parameters of tensors below ZeRO-3's persistence threshold (10 h)
    parts: tuple = ()       # the LLaVA part of each entry of ``sizes`` ("vision_tower", "projector", ...)
    adapter_sizes: tuple = ()  # LoRA's A (r, in) and B (out, r) of every LLM Linear, in module order
    llm_linear_sizes: tuple = ()  # (trains, shape) of the LLM blocks' Linear weights (what QLoRA quantises)


def method_sizes(shapes: Shapes, method, unfreeze_vision: bool = False) -> tuple:
    """``(trains, shape)`` of every parameter ``method`` holds (``methods.counts.trained_sizes``)."""
    return trained_sizes(method, shapes.sizes, shapes.parts, shapes.adapter_sizes, unfreeze_vision)


def trainable_count(shapes: Shapes, method, unfreeze_vision: bool = False) -> int:
    """Parameters that train under ``method`` (what ``train()`` reports as ``trainable_parameters``)."""
    return sized_numel(method_sizes(shapes, method, unfreeze_vision), True)


@functools.lru_cache(maxsize=64)
def shapes_of(numbers: Numbers, lora_r: int = 128) -> Shapes:
    """``Shapes`` of an architecture's numbers (cached: ``Numbers`` is hashable)."""
    owners = owners_of(numbers)
    by_part = {}
    for o in owners:
        by_part[o.part] = by_part.get(o.part, 0) + o.numel
    lm_linears = [o for o in owners if o.part == "language_model" and o.kind == "linear"]
    sizes = tuple((o.part != "vision_tower", shape) for o in owners for _, shape in o.params)
    h, i, layers, heads, kv_heads, head_dim, vocab = numbers.llm
    total = sum(by_part.values())
    return Shapes(
        name=numbers.name, total=total, vision=by_part["vision_tower"], trainable=total - by_part["vision_tower"],
        projector=by_part["projector"] + by_part.get("image_newline", 0),
        embed=next(o.numel for o in owners if o.path.endswith("embed_tokens")), lm_head=by_part.get("lm_head", 0),
        llm_linear=sum(math.prod(o.params[0][1]) for o in lm_linears),
        adapter=sum(lora_r * (o.params[0][1][0] + o.params[0][1][1]) for o in lm_linears),
        largest_layer=max(o.numel for o in owners), layers=layers, hidden=h, intermediate=i, heads=heads,
        kv_heads=kv_heads, head_dim=head_dim, vocab=vocab, lora_r=lora_r, sizes=sizes,
        persistent_small=sum(math.prod(s) for _, s in sizes if math.prod(s) < 10 * h),
        parts=tuple(o.part for o in owners for _ in o.params),
        adapter_sizes=tuple(shape for o in lm_linears for shape in ((lora_r, o.params[0][1][1]),
                                                                    (o.params[0][1][0], lora_r))),
        llm_linear_sizes=tuple((False, o.params[0][1]) for o in lm_linears))


def model_shapes(model, lora_r: int = 128) -> Shapes:
    """``Shapes`` of a name, alias, ``ModelSpec``, transformers config or module (cached per architecture)."""
    return shapes_of(read_numbers(model), lora_r)

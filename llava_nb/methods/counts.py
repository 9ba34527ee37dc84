"""What a training method trains, counted: ``count_parameters`` (a model's parts, and the parameters a method of the
registry trains), and ``trained_sizes`` (every parameter tensor a method holds, and whether it trains), which the
memory calculator partitions. Pure Python; a built module is walked instead (``models.params``).

    stage 1 (``stage1``)      the projector
    stage 2 (ddp, zero3, ...)  + v1.6's ``image_newline``, the LLM and ``lm_head`` (the ViT frozen)
    adapters (lora, zero3+lora, ...)  LoRA's A (r, in) and B (out, r) on every adapted LLM Linear, r (in + out)
                               each, and peft's trained copy of the projector (``modules_to_save``)
"""

from __future__ import annotations

import math

from ..errors import LlavaNbError
from ..models.params import LLAVA_LORA_ALPHA, LLAVA_LORA_R, parameter_breakdown
from .registry import get_method

#: the names ``count_parameters`` takes besides the registry's: ``full`` is stage 2's full fine-tuning
ALIASES = {"full": "ddp"}


def count_parameters(model, method: str = "full", lora_r: int = LLAVA_LORA_R, lora_alpha: int = LLAVA_LORA_ALPHA,
                     lora_targets=None) -> dict:
    """Count total and trainable parameters of a LLaVA model under a training method.

    ``model``: a name, alias, ``ModelSpec``, transformers config (all counted without torch) or module. ``method``:

    * ``stage1``: the projector only: LLaVA's pretraining stage (``methods.stages``);
    * ``full`` (or any engine: ``ddp``, ``zero3``, ...): stage 2, projector + LLM + lm_head with the ViT frozen;
    * an adapter method (``lora``, ``qlora``, ``zero3+lora``, ...): LLaVA's recipe, adapters of rank ``lora_r`` on
      ``lora_targets`` (default: every Linear of the LLM; ``lm_head`` is outside the LLM body) plus the projector
      trained in full: ``adapter = sum over the adapted Linears of r (in + out)``.

    Returns ``{"total", "trainable", "breakdown"}`` and, for LoRA methods, ``"adapter"``. ``total`` is the base
    architecture, without adapters. ``lora_alpha`` only scales the update; it is returned for the record.
    """
    chosen = get_method(ALIASES.get(method, method))
    adapters = chosen.trains == "adapters"
    if adapters and (not isinstance(lora_r, int) or isinstance(lora_r, bool) or lora_r <= 0):
        raise LlavaNbError(f"lora_r must be a positive integer, got {lora_r!r}")
    breakdown, total, adapted = parameter_breakdown(model, lora_targets if adapters else None)
    result = {"total": total, "breakdown": breakdown, "method": method}
    if chosen.trains == "projector":
        result["trainable"] = breakdown["projector"]
    elif chosen.trains == "llm":
        result["trainable"] = total - breakdown["vision_tower"]
    else:  # peft trains its copy of the projector (modules_to_save), not image_newline
        adapter = sum(lora_r * (fan_in + fan_out) for _, fan_in, fan_out in adapted)
        result.update(adapter=adapter, trainable=adapter + breakdown["projector"], lora_r=lora_r,
                      lora_alpha=lora_alpha, lora_targets=sorted({leaf for leaf, _, _ in adapted}))
    return result




def trained_sizes(method, sizes, parts, adapter_sizes, unfreeze_vision: bool = False) -> tuple:
    """``(trains, shape)`` of every parameter ``method`` holds, in module order, from the model's stage-2
    ``sizes`` (``(trains, shape)``), the LLaVA ``parts`` they belong to and LoRA's ``adapter_sizes``.

    Adapters: the base frozen, LoRA's A and B, and peft's trained copy of the projector beside its frozen original.
    ``unfreeze_vision``: the ViT trains too, in full (``methods.setup``'s option, LLaVA-1.6's recipe)."""
    method = get_method(method)
    vit = tuple(unfreeze_vision and part == "vision_tower" for part in parts)
    if method.trains == "llm":
        return tuple((t or v, s) for v, (t, s) in zip(vit, sizes))
    if method.trains == "projector":
        return tuple((part == "projector" or v, s) for v, part, (_, s) in zip(vit, parts, sizes))
    projector = tuple((True, s) for part, (_, s) in zip(parts, sizes) if part == "projector")
    return tuple((v, s) for v, (_, s) in zip(vit, sizes)) + tuple((True, s) for s in adapter_sizes) + projector


def sized_numel(sized, trains: bool | None = None) -> int:
    """Elements of the ``(trains, shape)`` entries: all of them, or only those that train (``True``) or not."""
    return sum(math.prod(s) for t, s in sized if trains is None or t == trains)

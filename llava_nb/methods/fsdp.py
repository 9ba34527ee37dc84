"""FSDP2 in LLaVA's shape: ``fully_shard`` on every ViT encoder layer and LLM decoder layer, then the root; the sharded
fp32 parameters are the master weights, all-gathered and computed in bf16, gradients reduce-scattered in fp32."""

from __future__ import annotations

import torch
from torch import nn

from ..models.params import model_parts

def fsdp_block_classes(model) -> list[str]:
    """Class names of the blocks FSDP shards one by one (Accelerate's ``transformer_cls_names_to_wrap``): the ViT's
    encoder layer and the LLM's decoder layer, read from the model (a name, config or module; built on meta)."""
    from ..models.architectures import as_config, build_model

    module = model if isinstance(model, nn.Module) else build_model(as_config(model), device="meta")
    parts = model_parts(module)
    vision = getattr(parts["vision_tower"], "vision_model", parts["vision_tower"])
    return sorted({type(vision.encoder.layers[0]).__name__, type(parts["language_model"].layers[0]).__name__})


def fsdp_mixed_precision():
    """FSDP2's policy in our recipes: parameters all-gathered and computed in bf16, gradients reduce-scattered in
    fp32 (the sharded fp32 parameters are the master weights)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard_fsdp(model: nn.Module, mesh=None) -> nn.Module:
    """FSDP2: ``fully_shard`` every LLM decoder layer and every ViT encoder layer, then the root.

    Sharding the ViT's encoder layers (not the whole vision tower) matters: a ``fully_shard`` on the tower module
    breaks transformers' hidden-state capture, which LLaVA needs for layer -2 (see the FSDP chapter). QLoRA's packed
    4-bit weights are left out of every unit (``packed_4bit``) and stay whole on each rank.
    """
    from torch.distributed.fsdp import fully_shard

    policy = fsdp_mixed_precision()
    parts = model_parts(model.get_base_model() if hasattr(model, "get_base_model") else model)  # under peft too
    vision = getattr(parts["vision_tower"], "vision_model", parts["vision_tower"])
    for unit in list(vision.encoder.layers) + list(parts["language_model"].layers) + [model]:
        fully_shard(unit, mesh=mesh, mp_policy=policy, ignored_params=packed_4bit(unit) or None)
    return model


def packed_4bit(module: nn.Module) -> set:
    """bitsandbytes' 4-bit weights packed in uint8 (QLoRA's frozen base): FSDP2 cannot shard them, and they stay
    whole on every rank, as Accelerate's ``fsdp2_prepare_model`` leaves them out of ``fully_shard`` too."""
    return {p for p in module.parameters() if type(p).__name__ == "Params4bit" and not p.is_floating_point()}

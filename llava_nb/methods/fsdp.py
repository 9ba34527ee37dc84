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
    breaks transformers' hidden-state capture, which LLaVA needs for layer -2 (see the FSDP chapter).
    """
    from torch.distributed.fsdp import fully_shard

    policy = fsdp_mixed_precision()
    parts = model_parts(model)
    vision = getattr(parts["vision_tower"], "vision_model", parts["vision_tower"])
    for layer in list(vision.encoder.layers) + list(parts["language_model"].layers):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model

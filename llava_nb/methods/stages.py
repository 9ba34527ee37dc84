"""LLaVA's two training stages: what each one trains and what it freezes.

* stage 1 (feature alignment, "pretrain"): only the projector learns; the ViT, the LLM and v1.6's ``image_newline``
  are frozen (haotian-liu/LLaVA@c121f04 llava/train/train.py:927-930: ``--tune_mm_mlp_adapter True`` freezes the
  whole model, then unfreezes ``mm_projector``). The projector learns to map CLIP features into the LLM's embedding
  space; ``image_newline`` keeps its random initialisation until stage 2 (llava/model/llava_arch.py:82-86).
* stage 2 (visual instruction tuning, "finetune"): the projector, v1.6's ``image_newline`` and the whole LLM (with
  ``lm_head``) learn; the ViT stays frozen.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnknownMethodError
from ..models.params import model_parts

STAGES = ("stage1", "stage2")


def freeze_for_stage(model: nn.Module, stage: str) -> nn.Module:
    """Set ``requires_grad`` on every parameter as LLaVA's ``stage`` does; returns the model."""
    if stage not in STAGES:
        raise UnknownMethodError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    parts = model_parts(model)
    model.requires_grad_(False)
    trainable = ["projector"] + (["image_newline", "language_model", "lm_head"] if stage == "stage2" else [])
    for name in trainable:
        part = parts[name]
        if part is not None:
            part.requires_grad_(True)
    return model


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (each shared tensor counted once; a ZeRO-3-partitioned
    parameter by its whole size, ``ds_numel``)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)

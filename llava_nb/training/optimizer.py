"""The optimizer's parameter groups, as LLaVA's ``LLaVATrainer.create_optimizer`` builds them
(haotian-liu/LLaVA@c121f04 llava/train/llava_trainer.py:150-213)::

    group                       weight decay     learning rate
    not projector, decayed      weight_decay     lr
    not projector, not decayed  0                lr
    projector, decayed          weight_decay     mm_projector_lr      (only with mm_projector_lr set:
    projector, not decayed      0                mm_projector_lr       llava_trainer.py:165-194)

Without ``mm_projector_lr`` there are the first two groups, every parameter at ``lr`` (llava_trainer.py:195-208).
With ``mm_vision_tower_lr`` (a trained ViT, as LLaVA-1.6 was trained: ``unfreeze_vision``), the vision tower gets
two more groups at its own lr, after the projector's: LLaVA-VL/LLaVA-NeXT@df17966 llava/train/llava_trainer.py:599-630
(its ``lr_mapper``; haotian-liu/LLaVA has no such option).

Decayed: every trainable parameter except those inside a normalisation layer and those whose name contains "bias"
(llava_trainer.py:163-164, the Trainer's rule in transformers 4.37.2, the version LLaVA pins: ``get_parameter_names``
skips the layers in ``ALL_LAYERNORM_LAYERS``, trainer_pt_utils.py:1063-1076; that list is ``nn.LayerNorm``,
pytorch_utils.py:25, plus ``LlamaRMSNorm``, models/llama/modeling_llama.py:120). Here a normalisation layer is an
``nn.LayerNorm`` or any ``*RMSNorm`` (LLaVA's list would decay a Mistral RMSNorm's gain only because 4.37.2 never
added it; every LLaVA script trains with ``--weight_decay 0.``). Decay pulls a weight towards zero by ``lr *
weight_decay`` of itself a step; on a norm's gain, whose neutral value is 1, that would be a bias, not a regulariser.

The projector is ``models.params.model_parts(...)["projector"]`` (LLaVA selects names containing "mm_projector");
with peft, its trainable copy (``modules_to_save``) lives inside it too. Groups are chosen by name and identity
before any engine wraps the model: Accelerate hands them on unchanged to DDP, DeepSpeed's ZeRO optimizers and
FSDP2. Empty groups are left out (LLaVA passes them to torch, which accepts them; DeepSpeed's ZeRO does not need
them).
"""

from __future__ import annotations

import torch

from ..models.params import model_parts


def parameter_groups(named_params, no_decay: set[str], projector: set[str], lr: float, weight_decay: float,
                     mm_projector_lr: float | None = None, vision: set[str] = frozenset(),
                     mm_vision_tower_lr: float | None = None) -> list[dict]:
    """LLaVA's groups (see the module docstring) from ``(name, parameter)`` pairs, the names not to decay, and the
    projector's and the vision tower's names; frozen parameters are left out, and so are empty groups."""
    trainable = [(n, p) for n, p in named_params if p.requires_grad]
    own = [(names, own_lr) for names, own_lr in ((projector, mm_projector_lr), (vision, mm_vision_tower_lr))
           if own_lr is not None]  # parts with an lr of their own, in LLaVA-NeXT's order
    rest = set().union(*(names for names, _ in own))
    groups = []
    for names, group_lr in ((None, None), *own):
        for decayed in (True, False):
            params = [p for n, p in trainable if (n not in rest if names is None else n in names)
                      and (n not in no_decay) == decayed]
            if params:
                group = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
                if group_lr is not None:
                    group["lr"] = group_lr
                groups.append(group)
    return groups


def no_decay_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters LLaVA does not decay: inside a normalisation layer, or named "bias"."""
    names = {n for n, _ in model.named_parameters() if "bias" in n}
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
            names |= {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()}
    return names


def part_names(model: torch.nn.Module, part: str) -> set[str]:
    """Names (in ``model.named_parameters()``) of the parameters of one of LLaVA's parts (``models.params``:
    "projector", "vision_tower", ...), peft's trainable copy of the projector included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's PeftModel
    module = model_parts(base)[part]
    if module is None:
        return set()
    ids = {id(p) for p in module.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, mm_projector_lr: float | None = None,
                   mm_vision_tower_lr: float | None = None) -> torch.optim.AdamW:
    """torch's AdamW over LLaVA's groups of ``model``'s trainable parameters (see the module docstring)."""
    groups = parameter_groups(model.named_parameters(), no_decay_names(model), part_names(model, "projector"), lr,
                              weight_decay, mm_projector_lr, part_names(model, "vision_tower"), mm_vision_tower_lr)
    return torch.optim.AdamW(groups, lr=lr)


def change_lr(scheduler, fresh_base_lrs: list[float], lr: float, resume_lr: float) -> str | None:
    """Set a resumed run's learning rate: every group's base lr becomes its fresh one times ``resume_lr / lr`` (the
    projector's ``mm_projector_lr`` keeps its ratio to ``lr``), and the current lr follows the schedule from the
    restored step: ``lr_g(t) = base_g * lambda(t)``. ``fresh_base_lrs`` are the base lrs before the checkpoint was
    loaded, so setting the same ``resume_lr`` twice changes nothing. Returns the line that logs the change (None
    when the checkpoint already ran at that lr)."""
    new = [b * resume_lr / lr for b in fresh_base_lrs]
    was, factor = scheduler.base_lrs[0], new[0] / scheduler.base_lrs[0]
    scheduler.base_lrs = new
    for group, base, schedule in zip(scheduler.optimizer.param_groups, new, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * schedule(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]  # what get_last_lr() reads
    if factor == 1:
        return None
    return (f"learning rate changed on resume at step {scheduler.last_epoch}: peak lr {was:g} -> {new[0]:g} "
            f"(every group x{factor:g}); the schedule continues")

"""The optimizer's parameter groups against LLaVA's own ``create_optimizer``, copied below."""

import pytest
import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import llava_nb
from llava_nb.methods.registry import get_method
from llava_nb.methods.setup import setup_model
from llava_nb.methods.stages import freeze_for_stage
from llava_nb.training.config import TrainConfig
from llava_nb.training.optimizer import make_optimizer
from llava_nb.training.worker import setup_options

#: transformers 4.37.2 (LLaVA's pin) pytorch_utils.py:25 ``[nn.LayerNorm]``, and models/llama/modeling_llama.py:120
#: appends ``LlamaRMSNorm`` (the class of the transformers installed here stands in for it)
ALL_LAYERNORM_LAYERS = [nn.LayerNorm, LlamaRMSNorm]


def get_parameter_names(model, forbidden_layer_types):
    """transformers 4.37.2 trainer_pt_utils.py:1063-1076, verbatim."""
    result = []
    for name, child in model.named_children():
        result += [
            f"{name}.{n}"
            for n in get_parameter_names(child, forbidden_layer_types)
            if not isinstance(child, tuple(forbidden_layer_types))
        ]
    # Add model specific parameters (defined with nn.Parameter) since they are not in any child.
    result += list(model._parameters.keys())
    return result


def llava_groups(opt_model, weight_decay, mm_projector_lr):
    """haotian-liu/LLaVA@c121f04 llava/train/llava_trainer.py:163-208, verbatim but for ``self.args`` and the
    projector's name: LLaVA's modules call it ``mm_projector``, llava-hf's ``multi_modal_projector``."""
    decay_parameters = get_parameter_names(opt_model, ALL_LAYERNORM_LAYERS)
    decay_parameters = [name for name in decay_parameters if "bias" not in name]
    if mm_projector_lr is not None:
        projector_parameters = [name for name, _ in opt_model.named_parameters() if "multi_modal_projector" in name]
        optimizer_grouped_parameters = [
            {
                "params": [
                    p for n, p in opt_model.named_parameters() if (n in decay_parameters and n not in projector_parameters and p.requires_grad)
                ],
                "weight_decay": weight_decay,
            },
            {
                "params": [
                    p for n, p in opt_model.named_parameters() if (n not in decay_parameters and n not in projector_parameters and p.requires_grad)
                ],
                "weight_decay": 0.0,
            },
            {
                "params": [
                    p for n, p in opt_model.named_parameters() if (n in decay_parameters and n in projector_parameters and p.requires_grad)
                ],
                "weight_decay": weight_decay,
                "lr": mm_projector_lr,
            },
            {
                "params": [
                    p for n, p in opt_model.named_parameters() if (n not in decay_parameters and n in projector_parameters and p.requires_grad)
                ],
                "weight_decay": 0.0,
                "lr": mm_projector_lr,
            },
        ]
    else:
        optimizer_grouped_parameters = [
            {
                "params": [
                    p for n, p in opt_model.named_parameters() if (n in decay_parameters and p.requires_grad)
                ],
                "weight_decay": weight_decay,
            },
            {
                "params": [
                    p for n, p in opt_model.named_parameters() if (n not in decay_parameters and p.requires_grad)
                ],
                "weight_decay": 0.0,
            },
        ]
    return optimizer_grouped_parameters


def as_sets(groups, lr):
    """Each non-empty group as (lr, weight decay, the ids of its parameters)."""
    return [(g.get("lr", lr), g["weight_decay"], frozenset(map(id, g["params"]))) for g in groups if g["params"]]


def stage2_model(name, adapter=None):
    model = llava_nb.build_model(name, seed=0)
    if adapter is None:
        freeze_for_stage(model, "stage2")
        return model
    return setup_model(model, get_method(adapter).for_stage(2), setup_options(TrainConfig(lora_r=4, lora_alpha=8)))


@pytest.mark.parametrize("name,adapter", [("tiny-llava-1.5", None), ("tiny-llava-v1.6", None),
                                          ("tiny-llava-1.5", "lora")])
@pytest.mark.parametrize("mm_projector_lr", [None, 2e-5])
def test_groups_are_what_llavas_create_optimizer_builds(name, adapter, mm_projector_lr):
    """The same parameters, weight decay and lr per group as LLaVA's create_optimizer: norms (LayerNorm, RMSNorm)
    and biases not decayed, 1-D parameters such as v1.6's image_newline decayed; with mm_projector_lr, the projector
    (peft's trainable copy under LoRA) in two groups of its own."""
    model = stage2_model(name, adapter)
    ours = make_optimizer(model, lr=2e-4, weight_decay=0.1, mm_projector_lr=mm_projector_lr)
    expected = as_sets(llava_groups(model, 0.1, mm_projector_lr), 2e-4)
    assert as_sets(ours.param_groups, None) == expected
    assert {lr for lr, _, _ in expected} == {2e-4, mm_projector_lr or 2e-4}  # not vacuous: both lrs present
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in ours.param_groups) == len(trainable)


def test_norms_and_biases_are_spared_and_the_projector_gets_its_lr():
    model = stage2_model("tiny-llava-1.5")
    groups = make_optimizer(model, lr=1e-3, weight_decay=0.5, mm_projector_lr=1e-5).param_groups
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    inner = model.model
    assert by_id[id(inner.language_model.norm.weight)] == (1e-3, 0.0)
    assert by_id[id(inner.language_model.layers[0].self_attn.q_proj.weight)] == (1e-3, 0.5)
    assert by_id[id(inner.multi_modal_projector.linear_1.weight)] == (1e-5, 0.5)
    assert by_id[id(inner.multi_modal_projector.linear_1.bias)] == (1e-5, 0.0)
    assert not any(id(p) in by_id for p in inner.vision_tower.parameters())  # frozen


def test_a_projector_lr_must_be_positive():
    with pytest.raises(llava_nb.LlavaNbError, match="mm_projector_lr must be positive"):
        TrainConfig(mm_projector_lr=0)
    with pytest.raises(llava_nb.LlavaNbError, match="max_grad_norm must be >= 0"):
        TrainConfig(max_grad_norm=-1)


def test_torch_adamw_steps_each_group_at_its_lr():
    """One AdamW step moves a projector weight by about its own lr, not the others' (Adam's first step is about
    lr * sign(gradient))."""
    model = stage2_model("tiny-llava-1.5")
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.0, mm_projector_lr=1e-6)
    proj, q = model.model.multi_modal_projector.linear_1.weight, model.model.language_model.layers[0].self_attn.q_proj.weight
    before = proj.detach().clone(), q.detach().clone()
    for p in (proj, q):
        p.grad = torch.ones_like(p)
    opt.step()
    assert (proj - before[0]).abs().max().item() == pytest.approx(1e-6, rel=1e-2)
    assert (q - before[1]).abs().max().item() == pytest.approx(1e-3, rel=1e-2)


def llava_next_groups(opt_model, weight_decay, mm_projector_lr, mm_vision_tower_lr):
    """LLaVA-VL/LLaVA-NeXT@df17966 llava/train/llava_trainer.py:597-630, verbatim but for ``self.args`` and the
    projector's name (``mm_projector`` there, ``multi_modal_projector`` in llava-hf's modules)."""
    decay_parameters = get_parameter_names(opt_model, ALL_LAYERNORM_LAYERS)
    decay_parameters = [name for name in decay_parameters if "bias" not in name]
    lr_mapper = {}
    if mm_projector_lr is not None:
        lr_mapper["multi_modal_projector"] = mm_projector_lr
    if mm_vision_tower_lr is not None:
        lr_mapper["vision_tower"] = mm_vision_tower_lr
    special_lr_parameters = [name for name, _ in opt_model.named_parameters() if any(module_keyword in name for module_keyword in lr_mapper)]
    optimizer_grouped_parameters = [
        {
            "params": [p for n, p in opt_model.named_parameters() if (n in decay_parameters and n not in special_lr_parameters and p.requires_grad)],
            "weight_decay": weight_decay,
        },
        {
            "params": [p for n, p in opt_model.named_parameters() if (n not in decay_parameters and n not in special_lr_parameters and p.requires_grad)],
            "weight_decay": 0.0,
        },
    ]
    for module_keyword, lr in lr_mapper.items():
        module_parameters = [name for name, _ in opt_model.named_parameters() if module_keyword in name]
        optimizer_grouped_parameters.extend(
            [
                {
                    "params": [p for n, p in opt_model.named_parameters() if (n in decay_parameters and n in module_parameters and p.requires_grad)],
                    "weight_decay": weight_decay,
                    "lr": lr,
                },
                {
                    "params": [p for n, p in opt_model.named_parameters() if (n not in decay_parameters and n in module_parameters and p.requires_grad)],
                    "weight_decay": 0.0,
                    "lr": lr,
                },
            ]
        )
    return optimizer_grouped_parameters


@pytest.mark.parametrize("mm_projector_lr", [None, 2e-5])
def test_a_trained_vision_tower_gets_its_own_lr_as_llava_next_does(mm_projector_lr):
    """LLaVA-1.6's configs record the ViT trained at 2e-6 (``mm_vision_tower_lr``): the same groups as LLaVA-NeXT's
    create_optimizer, for a v1.6 model with its vision tower unfrozen."""
    from llava_nb.methods.setup import SetupOptions, setup_model

    model = setup_model(llava_nb.build_model("tiny-llava-v1.6", seed=0), get_method("ddp").for_stage(2),
                        SetupOptions(unfreeze_vision=True))
    ours = make_optimizer(model, lr=1e-5, weight_decay=0.1, mm_projector_lr=mm_projector_lr, mm_vision_tower_lr=2e-6)
    expected = as_sets(llava_next_groups(model, 0.1, mm_projector_lr, 2e-6), 1e-5)
    assert as_sets(ours.param_groups, None) == expected
    vision = {id(p) for p in model.model.vision_tower.parameters()}
    assert {g["lr"] for g in ours.param_groups if vision & set(map(id, g["params"]))} == {2e-6}
    with pytest.raises(llava_nb.LlavaNbError, match="the vision tower is frozen; add unfreeze_vision=true"):
        TrainConfig(mm_vision_tower_lr=2e-6)
    assert TrainConfig(mm_vision_tower_lr=2e-6, unfreeze_vision=True).mm_vision_tower_lr == 2e-6

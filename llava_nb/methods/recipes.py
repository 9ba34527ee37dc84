"""The standard recipe of each training method, set up in one place.

``estimate_memory`` predicts these recipes, ``measure`` runs them, and the DeepSpeed, FSDP, LoRA and QLoRA chapters
reuse them. Every recipe trains LLaVA's stage 2 (projector + LLM; the ViT frozen):

* ``ddp``, ``zero1``, ``zero2``, ``zero3``, ``zero3-offload``: DeepSpeed stage 0/1/2/3 with ``bf16`` enabled and
  torch's AdamW passed in: bf16 weights, fp32 master weights, fp32 AdamW states. The ZeRO settings are LLaVA's
  ``zero2.json`` / ``zero3.json`` / ``zero3_offload.json`` with ``"auto"`` resolved as the Hugging Face Trainer does
  (``reduce_bucket_size = h*h``, ``stage3_prefetch_bucket_size = 0.9*h*h``,
  ``stage3_param_persistence_threshold = 10*h`` for the LLM's hidden size ``h``).
* ``fsdp``: FSDP2 ``fully_shard`` on every transformer block (LLM and ViT layers), then the root; fp32 sharded
  parameters, bf16 compute, gradients reduced in fp32.
* ``lora``: LLaVA's LoRA recipe (r=128, alpha=256 on every LLM Linear but ``lm_head``) on a bf16 base; adapters in
  fp32 (peft's default); the projector trained in full (in the base's bf16, as LLaVA's repo does); torch AdamW.
* ``qlora``: the same on an NF4, double-quantized base with bf16 compute; the ViT, projector and ``lm_head`` stay
  unquantized; ``prepare_model_for_kbit_training`` casts every remaining 16-bit parameter to fp32.

Gradient checkpointing, where asked for, is non-reentrant, of the transformer blocks.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UnknownMethodError
from ..models.params import LLAVA_LORA_ALPHA, LLAVA_LORA_R, model_parts

DEEPSPEED_METHODS = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "zero3-offload": 3}
METHODS = (*DEEPSPEED_METHODS, "fsdp", "lora", "qlora")

#: LLaVA's DeepSpeed files (haotian-liu/LLaVA ``scripts/zero2.json``, ``scripts/zero3.json``,
#: ``scripts/zero3_offload.json``), their ``zero_optimization`` sections verbatim; the precision, batch and optimizer
#: entries are "auto" there (filled in by the HF Trainer) and are set by ``deepspeed_config`` here.
LLAVA_ZERO = {
    "zero2": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
              "reduce_bucket_size": "auto"},
    "zero3": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
              "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
              "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
              "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True},
    "zero3-offload": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                      "offload_param": {"device": "cpu", "pin_memory": True}, "overlap_comm": True,
                      "contiguous_gradients": True, "sub_group_size": 1e9, "reduce_bucket_size": "auto",
                      "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                      "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
                      "gather_16bit_weights_on_model_save": True},
}


#: The rest of LLaVA's zero2.json / zero3.json: precision and batch entries left to the HF Trainer ("auto").
LLAVA_COMMON = {
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
}
#: zero3_offload.json's extras: bf16 forced on, DeepSpeed's own AdamW and WarmupLR (their values "auto" too).
LLAVA_OFFLOAD_EXTRA = {
    "bf16": {"enabled": True},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                  "warmup_num_steps": "auto"}},
    "gradient_clipping": "auto",
    "steps_per_print": 1e5,
    "wall_clock_breakdown": False,
}
LLAVA_FILES = {"zero2": "zero2.json", "zero3": "zero3.json", "zero3-offload": "zero3_offload.json"}


def llava_deepspeed_file(name: str) -> dict:
    """The content of LLaVA's ``scripts/<name>.json`` (``zero2``, ``zero3``, ``zero3-offload``), "auto" entries
    included; ``llava_nb/configs/`` ships them as files (``tests/test_recipes.py`` checks they agree)."""
    if name not in LLAVA_FILES:
        raise UnknownMethodError(f"LLaVA ships DeepSpeed files for {', '.join(LLAVA_FILES)}, not {name!r}")
    config = copy.deepcopy(LLAVA_COMMON)
    if name == "zero3-offload":
        config.update(copy.deepcopy(LLAVA_OFFLOAD_EXTRA))
    config["zero_optimization"] = copy.deepcopy(LLAVA_ZERO[name])
    return config


def llava_deepspeed_path(name: str):
    """Path of the shipped copy of LLaVA's DeepSpeed file for ``name`` (``TrainingArguments(deepspeed=path)``)."""
    from pathlib import Path

    llava_deepspeed_file(name)  # validates the name
    return Path(__file__).parent / "configs" / LLAVA_FILES[name]


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UnknownMethodError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def llm_hidden_size(config) -> int:
    text = getattr(config, "text_config", config)
    return int(text.hidden_size)


def deepspeed_config(method: str, hidden_size: int, micro_batch: int = 1, world_size: int = 1,
                     gradient_accumulation_steps: int = 1, bf16: bool = True, **zero_overrides) -> dict:
    """The DeepSpeed config ``method`` runs with, every ``"auto"`` resolved as the HF Trainer resolves it.

    ``ddp`` is stage 0 (no sharding); ``zero1`` is LLaVA's ``zero2.json`` with stage 1. ``zero_overrides`` replace
    entries of ``zero_optimization`` (e.g. ``stage3_param_persistence_threshold=0`` to see tiny models sharded).
    """
    stage = DEEPSPEED_METHODS.get(check_method(method))
    if stage is None:
        raise UnknownMethodError(f"{method!r} is not a DeepSpeed method; DeepSpeed methods: {', '.join(DEEPSPEED_METHODS)}")
    zero = copy.deepcopy(LLAVA_ZERO["zero3-offload" if method == "zero3-offload" else "zero3" if stage == 3 else "zero2"])
    zero["stage"] = stage
    auto = {"reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 10 * hidden_size}
    zero = {k: auto[k] if v == "auto" else v for k, v in zero.items()}
    zero.update(zero_overrides)
    config = {"train_micro_batch_size_per_gpu": micro_batch,
              "gradient_accumulation_steps": gradient_accumulation_steps,
              "train_batch_size": micro_batch * world_size * gradient_accumulation_steps,
              "bf16": {"enabled": bf16}, "zero_optimization": zero, "gradient_clipping": 1.0,
              "steps_per_print": 10**9, "wall_clock_breakdown": False}
    if method == "zero3-offload":
        # torch's AdamW on the CPU (no compiled DeepSpeedCPUAdam needed); DeepSpeed refuses it unless told to.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def lora_config(r: int = LLAVA_LORA_R, alpha: int = LLAVA_LORA_ALPHA, dropout: float = 0.05):
    """LLaVA's LoRA as its repository runs it: every Linear of the LLM, not ``lm_head``, and the projector trained in
    place (what the memory measurements use; ``lora.llava_lora_config`` also saves the projector with the adapter)."""
    from .lora import llava_lora_config

    return llava_lora_config(r, alpha, dropout, save_projector=False)


def qlora_quantization_config():
    """NF4 with double quantization and bf16 compute. transformers 5 matches ``llm_int8_skip_modules`` by prefix or
    suffix, not substring, so the modules are named by their full path ("multi_modal_projector" alone would not
    match ``model.multi_modal_projector.linear_1``; see the QLoRA chapter)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16,
                              llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "lm_head"])


def freeze_vision(model: nn.Module) -> nn.Module:
    """Stage 2: the ViT frozen, everything else trainable."""
    parts = model_parts(model)
    model.requires_grad_(True)
    parts["vision_tower"].requires_grad_(False)
    return model


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant gradient checkpointing of the transformer blocks, in train mode (``from_pretrained`` returns
    eval mode, where checkpointing does nothing)."""
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()


def prepare_model(model: nn.Module, method: str, grad_checkpointing: bool = True, lora_r: int = LLAVA_LORA_R,
                  lora_alpha: int = LLAVA_LORA_ALPHA) -> nn.Module:
    """Freeze, cast and wrap ``model`` (stage 2) as ``method``'s recipe does before the engine takes over.

    DeepSpeed casts to bf16 itself and FSDP keeps fp32 shards, so those models are returned in fp32. ``lora``
    expects a bf16 model; ``qlora`` a model loaded with ``qlora_quantization_config()``.
    """
    check_method(method)
    if method not in ("lora", "qlora"):  # peft freezes the base itself (and 4-bit weights cannot require grads)
        freeze_vision(model)
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        # Casts every 16-bit parameter (ViT, projector, embeddings, norms, lm_head) to fp32 and enables
        # checkpointing; we pass non-reentrant checkpointing explicitly.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif grad_checkpointing:
        enable_checkpointing(model)
    if method in ("lora", "qlora"):
        from peft import get_peft_model

        projector = model_parts(model)["projector"]
        model = get_peft_model(model, lora_config(lora_r, lora_alpha))  # freezes all but the adapters
        projector.requires_grad_(True)  # LLaVA trains the projector in full next to the adapters
        if grad_checkpointing:
            model.enable_input_require_grads()  # non-reentrant checkpointing needs no grad on the inputs, but keep
            # peft's usual set-up so that reentrant users get the same model
    model.train()
    return model


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

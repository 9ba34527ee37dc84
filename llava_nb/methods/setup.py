"""Setting a model up for a method, before its engine wraps it: what trains, in which dtype, with which adapters.

    model = load(..., **load_kwargs(method, mixed_precision))     # QLoRA: the 4-bit base; others: their dtype
    model = setup_model(model, method, mixed_precision=..., gradient_checkpointing=...)
    accelerator = Accelerator(**accelerator_kwargs(method, ...)); accelerator.prepare(model, ...)

``train()`` and the per-rank measurements (``lab.measure``) both call these, so the calculator is checked against
the set-up ``train()`` runs. Each method's dtypes are declared in ``registry.Method.states``; ``probe_states`` reads
them back from a live run (the registry test compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.params import model_parts
from .registry import Method, get_method
from .stages import freeze_for_stage

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class SetupOptions:
    """What ``setup_model`` needs besides the method (the fields of ``TrainConfig`` with these names)."""

    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    unfreeze_vision: bool = False
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05


def load_kwargs(method: Method | str, mixed_precision: str = "bf16") -> dict:
    """``from_pretrained`` arguments for ``method``'s model: QLoRA's 4-bit quantization; otherwise the dtype the
    method keeps its weights in, so that a 7B is never materialised in a dtype it is cast out of.

    QLoRA computes in bf16 with ``mixed_precision="bf16"`` and in fp32 with "no", as LLaVA's ``compute_dtype``
    follows ``--bf16`` (llava/train/train.py:795): the tiny recipe's fp32 QLoRA really runs in fp32, and a CPU
    without bf16 instructions is not made to emulate bf16 in every 4-bit layer."""
    method = get_method(method)
    states = method.states(mixed_precision)
    if method.adapter.quantized:
        from .lora import qlora_quantization_config

        compute = torch.bfloat16 if mixed_precision == "bf16" else torch.float32
        return {"dtype": compute, "quantization_config": qlora_quantization_config(compute)}
    if method.adapter.name != "none":
        return {"dtype": DTYPES[states.frozen]}
    return {"dtype": DTYPES[states.weights]}


def setup_model(model: nn.Module, method: Method | str, options: SetupOptions | None = None, **kwargs) -> nn.Module:
    """Freeze, cast, add adapters and enable checkpointing as ``method`` does; returns the model to wrap.

    Without an adapter: LLaVA's freezing for the method's stage (``stages.freeze_for_stage``), every parameter cast
    to the method's weight dtype (``Method.states``). With LoRA: everything frozen in the compute dtype, peft's
    adapters on every LLM Linear and the projector in ``modules_to_save`` (trained in full, saved with the adapter),
    and what trains in fp32. QLoRA: ``prepare_model_for_kbit_training`` on the 4-bit base first.
    """
    method = get_method(method)
    opt = options or SetupOptions(**kwargs)
    states = method.states(opt.mixed_precision)
    if opt.attn_implementation:  # "eager", "sdpa", ...: for the ViT and the LLM alike
        model.set_attn_implementation(opt.attn_implementation)
    _no_kv_cache(model)
    if method.adapter.name == "none":
        freeze_for_stage(model, f"stage{method.stage}")
        if opt.unfreeze_vision:  # what LLaVA-NeXT's recipes do; also the DDP unused-parameter trap
            model_parts(model)["vision_tower"].requires_grad_(True)
        _cast(model, DTYPES[states.weights])
        if opt.gradient_checkpointing:
            _enable_checkpointing(model)
    else:
        model = _add_adapters(model, method, opt, states)
    model.train()
    return model


def _no_kv_cache(model: nn.Module) -> None:
    """No KV cache while training, as LLaVA's train.py:842 sets ``model.config.use_cache = False``. Checkpointing
    turns it off anyway; without checkpointing transformers would build one in every training forward, and where
    the cached keys and values are not the tensors attention saves (fp32 under QLoRA and DDP's autocast) it costs
    up to 8 g e bytes a token per block (``memory/activations.py``)."""
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None:
            config.use_cache = False


def _enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant gradient checkpointing of the transformer blocks, without the input-require-grad hooks."""
    model.activation_checkpointing_enable({"use_reentrant": False})
    _no_input_require_grads(model)


def _no_input_require_grads(model: nn.Module) -> None:
    """Remove the hooks that make each input embedding's output require grad (``enable_input_require_grads``).

    transformers' ``activation_checkpointing_enable`` registers one on every sub-model's input embeddings, the ViT's
    patch embedding included, and peft's ``get_peft_model`` registers them again. Only reentrant checkpointing needs
    them (peft says so in ``prepare_model_for_kbit_training``); this checkpointing is non-reentrant. Left in, they
    turn the frozen ViT's patch embeddings into a leaf that requires grad: autograd then runs backward through the
    frozen ViT, keeps its layers' inputs from forward to backward and holds the leaves' gradients, none of which
    LLaVA does (its vision tower runs under ``torch.no_grad``, llava/model/multimodal_encoder/clip_encoder.py:45).
    ``disable_input_require_grads`` removes the set its model's last ``enable`` registered, so it is called after
    each one (on the base model under peft, which holds the handles)."""
    model.disable_input_require_grads()


def _add_adapters(model: nn.Module, method: Method, opt: SetupOptions, states) -> nn.Module:
    from peft import get_peft_model

    from .lora import llava_lora_config

    model.requires_grad_(False)  # peft decides what trains; 4-bit weights cannot require grads
    if method.adapter.quantized:
        from peft import prepare_model_for_kbit_training

        # Casts every remaining 16-bit parameter (ViT, projector, embeddings, norms, lm_head) to fp32 and enables
        # checkpointing; non-reentrant checkpointing is passed explicitly.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=opt.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        _no_input_require_grads(model)
    else:
        _cast(model, DTYPES[states.frozen])
        if opt.gradient_checkpointing:
            _enable_checkpointing(model)
    model = get_peft_model(model, llava_lora_config(opt.lora_r, opt.lora_alpha, opt.lora_dropout))
    _no_input_require_grads(model.get_base_model())
    if opt.unfreeze_vision:
        model_parts(model.get_base_model())["vision_tower"].requires_grad_(True)
    for p in model.parameters():  # adapters and the projector's trained copy in the method's weight dtype
        if p.requires_grad and p.dtype != DTYPES[states.weights] and not hasattr(p, "ds_id"):
            p.data = p.data.to(DTYPES[states.weights])
    return model


def _cast(model: nn.Module, dtype: torch.dtype) -> None:
    """``model.to(dtype)``, except for parameters DeepSpeed already partitioned (``from_pretrained`` under ZeRO-3's
    ``zero.Init``): their data lives in ``ds_tensor``, created in DeepSpeed's own dtype, which its engine keeps."""
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        return
    model.to(dtype)

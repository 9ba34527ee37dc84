"""Training methods as plug-ins of ``train()``.

A method says how the training processes share the work: which Accelerate settings (plugins, kwargs handlers) the
``Accelerator`` gets, and what happens to the model before ``accelerator.prepare`` (e.g. LoRA adapters). ``ddp``
is the baseline: every process holds a full replica and gradients are all-reduced. Registered here: ``ddp``,
``zero1``/``zero2``/``zero3``/``zero3-offload`` (DeepSpeed), ``fsdp`` (FSDP2), ``lora`` and ``qlora`` (peft).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import UnknownMethodError

@dataclass(frozen=True)
class Method:
    name: str
    description: str
    #: (hyperparameters, run facts) -> extra keyword arguments for ``Accelerator(...)``; the facts are the LLM's
    #: ``hidden_size``, the ``micro_batch`` per process and the ``world_size``
    accelerator_kwargs: Callable[[dict, dict], dict] = field(default=lambda hp, facts: {})
    #: (model, hyperparameters) -> the model to hand to ``accelerator.prepare``
    prepare_model: Callable = field(default=lambda model, hp: model)
    #: "ddp", "deepspeed" or "fsdp": DeepSpeed needs a real process group (not ``cpu=True``); DeepSpeed and FSDP
    #: hold sharded weights, gathered before saving, and their trained model is evaluated from the saved copy
    engine: str = "ddp"
    #: LoRA-style: the model is a peft model; train() saves the adapter (``lora.save_lora``) and the merged weights
    adapter: bool = False
    #: () -> extra ``from_pretrained`` arguments for loading the model (QLoRA: the 4-bit quantization config)
    load_kwargs: Callable[[], dict] = field(default=lambda: {})


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name in METHODS:
        return METHODS[name]
    raise UnknownMethodError(f"unknown training method {name!r}; available: {', '.join(METHODS)}")


def _ddp_kwargs(hp: dict, facts: dict) -> dict:
    from accelerate import DistributedDataParallelKwargs

    # find_unused_parameters=True is the escape hatch for parameters that get no gradient (see the Accelerate
    # chapter: an unfrozen ViT's last layer, because LLaVA reads layer -2). It costs an extra graph traversal.
    return {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=hp["find_unused_parameters"])]}


register(Method("ddp", "DistributedDataParallel: a full replica per process, gradients all-reduced",
                accelerator_kwargs=_ddp_kwargs))


def _deepspeed_kwargs(name: str):
    """Accelerate's ``DeepSpeedPlugin`` with LLaVA's ZeRO settings (``recipes.deepspeed_config``).

    Without GPUs Accelerate must not be given ``cpu=True`` (it would silently drop the plugin and run DDP); the
    process group is gloo instead, and DeepSpeed's CPU accelerator drives it. bf16 follows ``mixed_precision``.
    """

    def kwargs(hp: dict, facts: dict) -> dict:
        import torch
        from accelerate import DeepSpeedPlugin
        from accelerate.utils import InitProcessGroupKwargs

        from .recipes import deepspeed_config

        config = deepspeed_config(name, facts["hidden_size"], facts["micro_batch"], facts["world_size"],
                                  hp["gradient_accumulation_steps"], bf16=hp["mixed_precision"] == "bf16")
        out = {"deepspeed_plugin": DeepSpeedPlugin(hf_ds_config=config)}
        if not torch.cuda.is_available():
            out["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
        return out

    return kwargs


for _name, _stage in (("zero1", 1), ("zero2", 2), ("zero3", 3)):
    register(Method(_name, f"DeepSpeed ZeRO stage {_stage} (LLaVA's settings), torch AdamW",
                    accelerator_kwargs=_deepspeed_kwargs(_name), engine="deepspeed"))
register(Method("zero3-offload", "DeepSpeed ZeRO-3 with parameters and optimizer states offloaded to CPU "
                "(LLaVA's zero3_offload.json), torch AdamW", accelerator_kwargs=_deepspeed_kwargs("zero3-offload"),
                engine="deepspeed"))


def _fsdp_kwargs(hp: dict, facts: dict) -> dict:
    """Accelerate's ``FullyShardedDataParallelPlugin``, FSDP2: ``fully_shard`` on every ViT encoder layer and LLM
    decoder layer, then the root; parameters resharded after forward (ZeRO-3-like); sharded (DCP) checkpoints.
    With bf16, parameters are all-gathered and computed in bf16 and gradients reduce-scattered in fp32."""
    from accelerate import FullyShardedDataParallelPlugin

    from .recipes import fsdp_mixed_precision

    policy = fsdp_mixed_precision() if hp["mixed_precision"] == "bf16" else None
    return {"fsdp_plugin": FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=facts["block_classes"],
        reshard_after_forward=True, state_dict_type="SHARDED_STATE_DICT", mixed_precision_policy=policy)}


def force_fsdp_on_cpu(accelerator, plugin) -> None:
    """Make a CPU ``Accelerator`` use its FSDP plugin.

    Workaround for Accelerate 1.15: on CPU (``cpu=True``, distributed type MULTI_CPU, gloo) ``AcceleratorState``
    drops the ``fsdp_plugin`` without a word, and ``prepare`` then wraps the model in DDP. FSDP2's ``fully_shard``
    itself runs on CPU over gloo, so the distributed type is set to FSDP by hand, in ``PartialState`` too (each
    ``AcceleratorState()`` copies it from there), and the plugin is attached as Accelerate would on a GPU.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


register(Method("fsdp", "PyTorch FSDP2 through Accelerate's FSDP plugin: parameters, gradients and optimizer states "
                "sharded per block", accelerator_kwargs=_fsdp_kwargs, engine="fsdp"))


def _lora_model(model, hp: dict):
    """peft's LoRA on every LLM Linear (LLaVA's targets), the projector in ``modules_to_save`` so that it trains in
    full and is saved with the adapter; everything else frozen by peft."""
    from peft import get_peft_model

    from .lora import llava_lora_config

    return get_peft_model(model, llava_lora_config(hp["lora_r"], hp["lora_alpha"], hp["lora_dropout"]))


register(Method("lora", "LoRA adapters on every LLM Linear (peft), the projector trained in full, DDP over processes",
                accelerator_kwargs=_ddp_kwargs, prepare_model=_lora_model, adapter=True))


def _qlora_load() -> dict:
    import torch

    from .recipes import qlora_quantization_config

    return {"dtype": torch.bfloat16, "quantization_config": qlora_quantization_config()}


def _qlora_model(model, hp: dict):
    """QLoRA: the base loaded in NF4 (``load_kwargs``), peft's ``prepare_model_for_kbit_training`` (casts the
    remaining 16-bit parameters to fp32; checkpointing as ``gradient_checkpointing`` says), then LoRA as ``lora``."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from .lora import llava_lora_config

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=hp["gradient_checkpointing"],
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, llava_lora_config(hp["lora_r"], hp["lora_alpha"], hp["lora_dropout"]))


register(Method("qlora", "QLoRA: the base in 4-bit NF4 (bitsandbytes), LoRA adapters in bf16/fp32, the projector in "
                "full, DDP over processes", accelerator_kwargs=_ddp_kwargs, prepare_model=_qlora_model, adapter=True,
                load_kwargs=_qlora_load))

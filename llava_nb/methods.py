"""Training methods as plug-ins of ``train()``.

A method says how the training processes share the work: which Accelerate settings (plugins, kwargs handlers) the
``Accelerator`` gets, and what happens to the model before ``accelerator.prepare`` (e.g. LoRA adapters). ``ddp``
is the baseline: every process holds a full replica and gradients are all-reduced. Later chapters register
``zero1``/``zero2``/``zero3`` (DeepSpeed), ``fsdp``, ``lora`` and ``qlora`` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .errors import UnknownMethodError

PLANNED = ("zero3-offload", "fsdp", "lora", "qlora")


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    #: (hyperparameters, run facts) -> extra keyword arguments for ``Accelerator(...)``; the facts are the LLM's
    #: ``hidden_size``, the ``micro_batch`` per process and the ``world_size``
    accelerator_kwargs: Callable[[dict, dict], dict] = field(default=lambda hp, facts: {})
    #: (model, hyperparameters) -> the model to hand to ``accelerator.prepare``
    prepare_model: Callable = field(default=lambda model, hp: model)
    #: "ddp" or "deepspeed": DeepSpeed needs a real process group (not ``cpu=True``) and gathers ZeRO-3 weights
    #: before saving
    engine: str = "ddp"


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name in METHODS:
        return METHODS[name]
    planned = f" ({name} is planned but not implemented yet)" if name in PLANNED else ""
    raise UnknownMethodError(f"unknown training method {name!r}{planned}; available: {', '.join(METHODS)}")


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

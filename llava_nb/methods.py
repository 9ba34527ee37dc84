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

PLANNED = ("zero1", "zero2", "zero3", "zero3-offload", "fsdp", "lora", "qlora")


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    #: hyperparameters -> extra keyword arguments for ``Accelerator(...)``
    accelerator_kwargs: Callable[[dict], dict] = field(default=lambda hp: {})
    #: (model, hyperparameters) -> the model to hand to ``accelerator.prepare``
    prepare_model: Callable = field(default=lambda model, hp: model)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name in METHODS:
        return METHODS[name]
    planned = f" ({name} is planned but not implemented yet)" if name in PLANNED else ""
    raise UnknownMethodError(f"unknown training method {name!r}{planned}; available: {', '.join(METHODS)}")


def _ddp_kwargs(hp: dict) -> dict:
    from accelerate import DistributedDataParallelKwargs

    # find_unused_parameters=True is the escape hatch for parameters that get no gradient (see the Accelerate
    # chapter: an unfrozen ViT's last layer, because LLaVA reads layer -2). It costs an extra graph traversal.
    return {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=hp["find_unused_parameters"])]}


register(Method("ddp", "DistributedDataParallel: a full replica per process, gradients all-reduced",
                accelerator_kwargs=_ddp_kwargs))

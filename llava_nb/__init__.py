"""``llava_nb``: the companion package of the LLaVA fine-tuning book.

The chapters import what they reuse from here. The subpackages follow the book's architecture, lowest layer first:

* ``errors``, ``paths``: the package's exceptions and folders;
* ``models``: configs by name (``specs``, pure Python), ``build_model``/``load_model``, processors, the tiny
  tokenizer, chat templates, image tokens (anyres included), parameter counts, one forward pass traced;
* ``methods``: the training methods (an engine: ddp, zero1/2/3, zero3-offload, fsdp; with an adapter: none,
  lora, qlora): how each sets the model up, wraps it, and which memory terms it implies;
* ``memory``: the memory calculator (pure Python): shapes from config numbers, formulas, ``estimate_memory``;
* ``data``: LLaVA-format records, datasets and batches, the synthetic shapes data;
* ``training``: ``train()`` with its typed ``TrainConfig``, the worker loop, launching, checkpoints,
  evaluation, inference, the tiny pretrained parts;
* ``viz``: the figures and widgets the chapters share;
* ``lab``: what the chapters run to look inside (per-rank measurements, step speed, NF4 from scratch, benchmarks).

Importing ``llava_nb`` imports no torch: each name below is loaded when first used.
"""

from __future__ import annotations

import importlib
import os as _os

# torch.cuda.is_available() "poisons fork" unless this is set: once a process has called it, the processes that
# notebook_launcher forks from it fail with "Cannot re-initialize CUDA in forked subprocess" (measured on 2 x H200
# with torch 2.11: experiments/gpu's fork probe). With it, torch answers from NVML instead of initialising the
# CUDA driver (https://docs.pytorch.org/docs/stable/generated/torch.cuda.is_available.html).
_os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

#: public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(["KNOWN_MODELS", "hub_id", "resolve_name"], "llava_nb.models.specs"),
    **dict.fromkeys(["build_model", "get_config", "load_model"], "llava_nb.models.architectures"),
    **dict.fromkeys(["DataError", "load_conversations"], "llava_nb.data.records"),
    **dict.fromkeys(["ImageTokenMismatchError", "InvalidSizeError", "LlavaNbError", "ProfileError",
                     "UnknownMethodError", "UnknownModelError"], "llava_nb.errors"),
    **dict.fromkeys(["anyres_layout", "check_image_tokens", "count_image_tokens", "select_best_resolution"],
                    "llava_nb.models.image_tokens"),
    "sample_image": "llava_nb.data.images",
    "estimate_memory": "llava_nb.memory.estimate",
    "count_parameters": "llava_nb.methods.counts",
    **dict.fromkeys(["build_processor", "load_processor"], "llava_nb.models.processors"),
    **dict.fromkeys(["get_profile", "profile_model"], "llava_nb.models.profiles"),
    "load_tokenizer": "llava_nb.models.tokenizer",
    "trace_forward": "llava_nb.models.tracing",
    "train": "llava_nb.training.api",
    "device_for_ranks": "llava_nb.training.launch",
    "get_method": "llava_nb.methods.registry",
    "inference": "llava_nb.training.inference",
}
_SUBPACKAGES = ("models", "methods", "memory", "data", "training", "viz", "lab", "errors", "paths", "cli")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        value = module if module.__name__.endswith("." + name) else getattr(module, name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'llava_nb' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBPACKAGES))

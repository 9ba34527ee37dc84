"""``llava_nb``: the companion package of the LLaVA fine-tuning book.

The chapters import everything they reuse from here; each module holds one concern:

* ``profiles``: ``tiny`` (CPU) or ``full`` (real checkpoints on GPUs);
* ``architectures``: ``get_config``, ``build_model``, ``load_model`` for every LLaVA version;
* ``tokenizer`` / ``processors``: the tiny tokenizer and the LLaVA processors, built locally;
* ``image_tokens``: how many image tokens an image becomes (anyres included);
* ``params``: parameter counts from the module structure;
* ``tracing``: one forward pass, step by step, with shapes;
* ``synthetic`` / ``data`` / ``templates`` / ``dataset``: the shapes data, reading LLaVA files, templates, batches;
* ``pretrain`` / ``train`` / ``methods`` / ``evaluate`` / ``inference``: the tiny pretrained parts, ``train()``,
  its method plug-ins, held-out evaluation, and answering questions;
* ``memory`` / ``memory_validation`` / ``measure`` / ``throughput``: the memory calculator, its checks against
  measured ranks, the per-rank measurement harness, and step speed (model FLOPs, MFU, communication);
* ``recipes`` / ``checkpoints`` / ``hf_trainer`` / ``zero3_trap``: the DeepSpeed, FSDP, LoRA and QLoRA set-ups,
  sharded checkpoints consolidated, the Hugging Face ``Trainer`` path, and the ZeRO-3 trap;
* ``plotting`` / ``widgets``: the figures and widgets the chapters share.
"""

import os as _os

# torch.cuda.is_available() "poisons fork" unless this is set: once a process has called it, the processes that
# notebook_launcher forks from it fail with "Cannot re-initialize CUDA in forked subprocess" (measured on 2 x H200
# with torch 2.11: data/gpu/tiny_pipeline_gpus.py's fork probe). With it, torch answers from NVML instead of
# initialising the CUDA driver (https://docs.pytorch.org/docs/stable/generated/torch.cuda.is_available.html).
_os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

from .architectures import (  # noqa: E402 (after the environment variable)
    KNOWN_MODELS,
    build_model,
    get_config,
    hub_id,
    load_model,
    resolve_name,
)
from .data import DataError, load_conversations
from .errors import (
    ImageTokenMismatchError,
    InvalidSizeError,
    LlavaNbError,
    ProfileError,
    UnknownMethodError,
    UnknownModelError,
)
from .image_tokens import anyres_layout, check_image_tokens, count_image_tokens, select_best_resolution
from .images import sample_image
from .memory import estimate_memory
from .params import count_parameters
from .processors import build_processor, load_processor
from .profiles import get_profile, profile_model
from .tokenizer import load_tokenizer
from .tracing import trace_forward
from .train import train
from . import inference
from .compat import silence_known_warnings

silence_known_warnings()  # known library incompatibilities only; see llava_nb/compat.py

__all__ = [
    "KNOWN_MODELS", "build_model", "get_config", "hub_id", "load_model", "resolve_name",
    "ImageTokenMismatchError", "InvalidSizeError", "LlavaNbError", "ProfileError", "UnknownMethodError",
    "UnknownModelError", "anyres_layout", "check_image_tokens", "count_image_tokens", "select_best_resolution",
    "sample_image", "count_parameters", "build_processor", "load_processor", "get_profile", "profile_model",
    "load_tokenizer", "trace_forward", "train", "DataError", "load_conversations", "inference", "estimate_memory",
]

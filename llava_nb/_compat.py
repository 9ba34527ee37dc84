"""Workarounds for known incompatibilities between the pinned libraries. Each one says why and when to drop it.

* peft 0.21 reads ``model.is_gradient_checkpointing``, which transformers 5 deprecated in favour of
  ``is_activation_checkpointing``; every ``get_peft_model`` then emits a ``FutureWarning`` that is not ours to fix
  and that would fail a build which treats warnings as errors. We silence exactly that message. Drop this once
  peft reads the new attribute. Likewise peft's ``prepare_model_for_kbit_training`` still calls the deprecated
  ``gradient_checkpointing_enable`` (our own code calls ``activation_checkpointing_enable``).
* DeepSpeed 0.19 calls ``torch.distributed.all_gather_into_tensor`` / ``reduce_scatter_tensor``, which torch 2.13
  deprecated; the FutureWarning comes from every ZeRO step. Drop once DeepSpeed moves to the new names.
* bitsandbytes 0.50 on a CPU with AVX512-BF16 tries to fetch a kernel from the Hugging Face Hub at import and logs a
  warning when it cannot ("Failed to load CPU gemm_4bit_forward from kernels-community"); it then uses its own
  kernels. Offline that is expected, so its logger is set to errors only.
* torch 2.13's FSDP2 warns when a ``fully_shard``-ed root module "returned a view tensor": LLaVA's forward returns
  ``logits[:, slice]`` (a view) in its output. The warning is about in-place ops on that view, which neither
  ``train()`` nor transformers does; the loss is computed inside forward. Keep it silenced while that holds.
* DeepSpeed logs "Setting accelerator to CPU" whenever it is imported without a GPU (transformers and Accelerate
  import it when it is installed). Without CUDA we name the CPU accelerator explicitly (``DS_ACCELERATOR=cpu``),
  which is what that warning asks for; a reader's own setting wins.
"""

import logging
import os
import warnings

KNOWN_WARNINGS = [
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
    (r"`gradient_checkpointing_enable` is deprecated", FutureWarning),
    (r"`torch.distributed.all_gather_into_tensor` is deprecated", FutureWarning),
    (r"`torch.distributed.reduce_scatter_tensor` is deprecated", FutureWarning),
    (r"FSDP2-wrapped module \(FSDP\w+\) returned a view tensor", UserWarning),
]


def silence_known_warnings() -> None:
    """Ignore exactly the warnings above, and turn off transformers' progress bars (e.g. "Writing model shards"),
    which would print to stderr in every saving cell of the book."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

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
* bitsandbytes 0.50's CUDA 4-bit matmul warns, at every call, when the inner dimension is not a multiple of the
  quantization block size (64): "inner dimension (344) is not aligned for fast kernel ... falling back to slower
  implementation" (bitsandbytes/backends/cuda/ops.py, ``_gemm_4bit``). The tiny models' widths are such dimensions;
  every real LLaVA width (4096, 5120, 11008, 13824, 14336) is a multiple of 64. A speed notice about tiny models
  on GPUs, not an error; drop it if the tiny models' widths become multiples of 64.
* DeepSpeed logs "Setting accelerator to CPU" whenever it is imported without a GPU (transformers and Accelerate
  import it when it is installed). Without CUDA we name the CPU accelerator explicitly (``DS_ACCELERATOR=cpu``),
  which is what that warning asks for; a reader's own setting wins.
* DeepSpeed 0.19 on the CPU accelerator probes *every* op it knows the first time a process sets up its
  communication backend (``TorchBackend`` -> ``build_shm_op`` reads ``deepspeed.ops.__compatible_ops__``), although it
  only asks about its shared-memory all-reduce. The async_io probe compiles and links a test program with ``-laio``
  (``AsyncIOBuilder.is_compatible`` -> ``has_function``); without libaio the linker prints "cannot find -laio". The
  probe means to hide that by pointing ``sys.stderr.fileno()`` at a file, but in a Jupyter kernel, and in the workers
  ``notebook_launcher`` forks from it, that is a copy of the original stderr, not fd 2 where the linker writes: the
  messages reach the cell's stderr and the build log, twice per ZeRO run. DeepSpeed has no setting for it
  (``DS_BUILD_AIO`` is read only by its setup.py, at install). ``deepspeed_probes_only_the_ops_it_uses`` gives that
  table its entries on first use instead, so the shared-memory op is probed (a platform check, no compiler) and
  async_io, which nothing here uses, never is (ZeRO offloads to CPU memory, not NVMe). ``launch()`` calls it before
  it starts DeepSpeed workers without CUDA. Drop it once DeepSpeed probes only the ops it is asked about.
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
    (r"inner dimension \(\d+\) is not aligned for fast kernel", UserWarning),
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


def deepspeed_probes_only_the_ops_it_uses() -> None:
    """Make ``deepspeed.ops.__compatible_ops__`` (see the module docstring) probe each op when it is first asked
    about, instead of every op at once. A no-op once the table exists (probed, or set by this function)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # as silence_known_warnings, before deepspeed picks one
    import deepspeed.ops
    from deepspeed.ops.op_builder.all_ops import ALL_OPS
    from deepspeed.ops.op_builder.builder import probe_is_compatible

    if "__compatible_ops__" in vars(deepspeed.ops):
        return

    class ProbedOnFirstUse(dict):
        """DeepSpeed's table of compatible ops, each op probed (``probe_is_compatible``) when first asked about."""

        def __missing__(self, name):
            self[name] = name in ALL_OPS and bool(probe_is_compatible(ALL_OPS[name]))
            return self[name]

        def get(self, name, default=None):
            return self[name] if name in self or name in ALL_OPS else default

    deepspeed.ops.__compatible_ops__ = ProbedOnFirstUse(deepspeed_not_implemented=False)


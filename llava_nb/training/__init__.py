"""Training: ``train()`` and its typed configuration, the worker loop, launching processes, checkpoints, evaluation,
inference and the tiny world's pretrained parts.
"""

from .._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, globals())  # submodules load when first used

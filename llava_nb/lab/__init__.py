"""What the chapters run to look inside: per-rank memory measurements, step speed, NF4 from scratch, paged
optimizers, the FSDP and ZeRO-3 demos, the Hugging Face Trainer path, sweeps and benchmarks.
"""

from .._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, globals())  # submodules load when first used

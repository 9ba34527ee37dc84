"""Data: LLaVA-format records (``records``), datasets, batches and the length-grouped sampler (``dataset``), LLaVA's
modality-grouped sampler (``sampling``), the synthetic shapes set (``synthetic``), sample images.
"""

from .._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, globals())  # submodules load when first used

"""The models: every known LLaVA as plain numbers (``specs``), transformers configs and modules
(``architectures``), processors, the tiny tokenizer, chat templates, image tokens, parameter counts, tracing.
"""

from .._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, globals())  # submodules load when first used

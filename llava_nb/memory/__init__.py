"""The memory calculator, in pure Python (no torch): shapes from config numbers, the formulas, ``estimate_memory``,
and its checks against measured runs.
"""

from .._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, globals())  # submodules load when first used

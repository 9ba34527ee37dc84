"""Figures, HTML renderings and widgets the chapters share.
"""

from .._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, globals())  # submodules load when first used

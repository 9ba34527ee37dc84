"""Subpackages that load their modules when first used, so that importing a package stays cheap (no torch)."""

from __future__ import annotations

import importlib


def lazy_submodules(package: str, namespace: dict):
    """A module ``__getattr__`` for ``package``: ``package.name`` imports ``package.name`` on first use."""

    def __getattr__(name: str):
        try:
            module = importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        namespace[name] = module
        return module

    return __getattr__

"""The memory calculator, in pure Python (no torch): shapes from config numbers, the formulas, ``estimate_memory``,
and its checks against measured runs.
"""

import importlib as _importlib


def __getattr__(name: str):  # submodules load when first used, so importing the package stays cheap
    try:
        module = _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = module
    return module

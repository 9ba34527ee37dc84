"""Data: LLaVA-format records (``records``), datasets, batches and samplers (``dataset``), the synthetic shapes
set (``synthetic``), sample images.
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

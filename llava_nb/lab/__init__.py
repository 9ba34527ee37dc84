"""What the chapters run to look inside: per-rank memory measurements, step speed, NF4 from scratch, paged
optimizers, the FSDP and ZeRO-3 demos, the Hugging Face Trainer path, sweeps and benchmarks.
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

"""Training methods: one registry (``registry``) of engines (ddp, zero1/2/3, zero3-offload, fsdp) and adapters
(lora, qlora), with the stages' freezing rules, DeepSpeed configs, FSDP2 policies and LoRA set-ups.
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

"""Training methods: one registry (``registry``) of engines (ddp, zero1/2/3, zero3-offload, fsdp) and adapters
(lora, qlora), with the stages' freezing rules, DeepSpeed configs, FSDP2 policies and LoRA set-ups.
"""

from .._lazy import lazy_submodules

__getattr__ = lazy_submodules(__name__, globals())  # submodules load when first used

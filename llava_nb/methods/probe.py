"""Reading back, from a live run, the dtypes a method keeps its training states in: what ``Method.states``
declares and the memory calculator counts. ``train()`` records them in ``result["states"]``."""

from __future__ import annotations

import torch

#: torch dtypes by the registry's names
NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _inner(optimizer):
    """The torch optimizer that steps (Accelerate's and DeepSpeed's wrappers each hold one in ``.optimizer``)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def _dtype(p) -> str:
    """The dtype a parameter is kept in: a 4-bit weight's "nf4", ZeRO-3's partition, FSDP2's local shard."""
    if type(p).__name__ == "Params4bit":
        return "nf4"
    if hasattr(p, "ds_tensor"):
        return NAMES[p.ds_tensor.dtype]
    return NAMES[(p.to_local() if hasattr(p, "to_local") else p).dtype]


class StateProbe:
    """Hooks the stepping optimizer of a prepared ``model``; ``read()`` after a step returns ``Method.states``-shaped
    dtypes. What the optimizer steps is read inside its step: ZeRO-3 hands it one fp32 sub-group at a time and
    empties its parameter groups afterwards."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, _inner(optimizer)
        self.gradients = self.master = None

        def hook(opt, args, kwargs):
            stepped = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if stepped and self.gradients is None:
                ids = {id(p) for p in getattr(self.model, "module", self.model).parameters()}
                separate = [p for p in stepped if id(p) not in ids]  # DeepSpeed's fp32 partitions
                self.gradients = NAMES[stepped[0].grad.dtype]
                self.master = NAMES[separate[0].dtype] if separate else None

        self.handle = self.optimizer.register_step_pre_hook(hook)

    def read(self) -> dict | None:
        """The dtypes of weights, master weights, gradients, optimizer states and frozen weights (None before the
        first step)."""
        self.handle.remove()
        if self.gradients is None:
            return None
        module = getattr(self.model, "module", self.model)  # DeepSpeedEngine and DDP hold it in .module
        trained = [p for p in module.parameters() if p.requires_grad]
        state = next(s for s in self.optimizer.state.values() if "exp_avg" in s)
        return {"weights": _dtype(trained[0]), "master": self.master, "gradients": self.gradients,
                "optimizer": NAMES[state["exp_avg"].dtype], "frozen": _frozen(module)}


def _frozen(module) -> str | None:
    """The dtype of the frozen LLM Linear weights if any (a LoRA base), else of the frozen ViT."""
    frozen = [(n, p) for n, p in module.named_parameters() if not p.requires_grad]
    llm = [p for n, p in frozen if "language_model" in n and "layers" in n and "proj" in n]
    vision = [p for n, p in frozen if "vision_tower" in n]
    chosen = llm or vision
    return _dtype(chosen[0]) if chosen else None

"""What one rank holds, read from the tensors themselves: shards, optimizer states, the gradients a step reads
(``lab.measure``, ``lab.paged``)."""

from __future__ import annotations

import torch


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (an FSDP2 DTensor's shard; a plain tensor as it is)."""
    return t.to_local() if hasattr(t, "to_local") else t


def nbytes(tensors) -> int:
    """Bytes of ``tensors`` on this rank (None entries skipped)."""
    return sum(local(t).numel() * t.element_size() for t in tensors if t is not None)


def state_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's per-parameter state tensors: AdamW's moments (``exp_avg``, ``exp_avg_sq``), and for
    bitsandbytes' 8-bit optimizers their code maps and block constants. The scalar ``step`` counters are left out
    (they live on the CPU unless ``capturable``/``fused``)."""
    return [v for s in opt.state.values() for k, v in s.items() if torch.is_tensor(v) and k != "step"]


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of ``opt``'s per-parameter states on this rank."""
    return nbytes(state_tensors(opt))


def grad_probe(opt: torch.optim.Optimizer) -> dict:
    """Record the bytes of the gradients ``opt`` reads, at each of its steps."""
    seen = {}

    def hook(optimizer, args, kwargs):
        # ZeRO-3 steps one sub-group at a time: keep the largest set of gradients seen at once
        now = nbytes([p.grad for g in optimizer.param_groups for p in g["params"]])
        seen["gradients"] = max(seen.get("gradients", 0), now)

    opt.register_step_pre_hook(hook)
    return seen

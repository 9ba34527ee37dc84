"""Paged optimizers (QLoRA, Dettmers et al. 2023, section 3): optimizer states in CUDA unified memory, and what the
usual memory measurements do not see.

A bitsandbytes paged optimizer (``bitsandbytes.optim.PagedAdamW``, ``PagedAdamW8bit``) allocates every state tensor
of 1e5 elements or more with ``cudaMallocManaged`` (``bitsandbytes.functional.get_paged``) and wraps that memory in
a tensor through ``torch.frombuffer``. Three consequences follow, and ``paged_optimizer_run`` measures them:

* the state tensors report ``device == cpu``, although the kernels read and write them on the GPU;
* torch's caching allocator never sees them, so ``torch.cuda.memory_allocated`` and ``max_memory_allocated`` leave
  them out; the driver does see their resident pages (``torch.cuda.mem_get_info``);
* the driver may move their pages to host memory when the GPU runs short; bitsandbytes prefetches a parameter's
  states back to the GPU before its update, and that step pays for the transfer (``--evict`` forces the move with
  ``prefetch_tensor(..., to_cpu=True)``, which fails on CUDA 13 with bitsandbytes 0.50.2).

The demonstration stays far below the card's memory on purpose: oversubscribed managed memory thrashes and can
stall the GPU. Run one optimizer per process, so that each reading starts from the same state::

    python -m llava_nb.lab.paged --optimizer "bnb PagedAdamW" --out paged.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from .harness import versions
from .holdings import state_tensors

#: name -> (module path, class, keyword arguments); "torch AdamW" is the baseline the others are compared with
OPTIMIZERS = {
    "torch AdamW": ("torch.optim", "AdamW", {}),
    "bnb AdamW": ("bitsandbytes.optim", "AdamW", {"optim_bits": 32}),
    "bnb PagedAdamW": ("bitsandbytes.optim", "PagedAdamW", {}),
    "bnb PagedAdamW8bit": ("bitsandbytes.optim", "PagedAdamW8bit", {}),
}


def make_optimizer(name: str, params, lr: float = 1e-4) -> torch.optim.Optimizer:
    """One of ``OPTIMIZERS`` over ``params``."""
    import importlib

    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    module, cls, kwargs = OPTIMIZERS[name]
    return getattr(importlib.import_module(module), cls)(params, lr=lr, **kwargs)


def _driver_used(device: torch.device) -> int:
    """Bytes in use on the GPU as the driver counts them (every allocation, managed pages included)."""
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return total - free


def paged_optimizer_run(name: str, width: int = 4096, layers: int = 8, steps: int = 4, device: str = "cuda",
                        seed: int = 0, evict: bool = False) -> dict:
    """Train ``layers`` fp32 ``Linear(width, width)`` layers for ``steps`` steps with optimizer ``name``; report
    where its states live and what each memory counter sees.

    With the defaults: 8 x 4096^2 = 134M parameters, 0.54 GB of weights, 1.07 GB of 32-bit Adam states. The
    record holds ``state_bytes`` (all state tensors), ``paged_bytes`` (those in managed memory), ``state_device``
    (what the tensors report), the losses, each step's seconds, and on CUDA the growth from creating the optimizer
    and stepping it, as ``memory_allocated``, ``max_memory_allocated`` and the driver count it; then, with
    ``evict``, for a paged optimizer, the driver's count after moving every paged state to host memory, after the
    next step, and that step's seconds. (``evict`` kills the process on CUDA 13 with bitsandbytes 0.50.2: its
    ``prefetch_tensor(..., to_cpu=True)`` fails with "invalid device ordinal"; ``experiments/gpu/paged_probe.py``.)"""
    device = torch.device(device)
    cuda = device.type == "cuda"
    torch.manual_seed(seed)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)]).to(device)
    x = torch.randn(64, width, device=device)  # (tokens, width)

    def step(opt) -> float:
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradients' memory in place, so only the optimizer's changes
        return loss.item()

    model(x).pow(2).mean().backward()  # gradients exist before the baseline reading
    model.zero_grad(set_to_none=False)
    rec = {"optimizer": name, "parameters": sum(p.numel() for p in model.parameters()), "width": width,
           "layers": layers, "steps": steps, "device": device.type}
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        alloc0, used0 = torch.cuda.memory_allocated(device), _driver_used(device)
    opt = make_optimizer(name, model.parameters())
    losses, times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step(opt))
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    states = state_tensors(opt)
    paged = [t for t in states if getattr(t, "is_paged", False)]
    rec.update(losses=losses, step_s=times, state_bytes=sum(t.nbytes for t in states),
               paged_bytes=sum(t.nbytes for t in paged), state_device=sorted({t.device.type for t in states}))
    if cuda:
        rec.update(allocated_growth=torch.cuda.memory_allocated(device) - alloc0,
                   peak_allocated_growth=torch.cuda.max_memory_allocated(device) - alloc0,
                   driver_growth=_driver_used(device) - used0, gpu=torch.cuda.get_device_name(device))
        if paged and evict:
            from bitsandbytes.functional import prefetch_tensor

            for t in paged:
                prefetch_tensor(t, to_cpu=True)  # what the driver does by itself when the GPU runs short
            rec["driver_growth_evicted"] = _driver_used(device) - used0
            t0 = time.perf_counter()
            rec["loss_after_eviction"] = step(opt)  # bitsandbytes prefetches each state back before its update
            torch.cuda.synchronize(device)
            rec["step_s_after_eviction"] = time.perf_counter() - t0
            rec["driver_growth_after_step"] = _driver_used(device) - used0
    return rec


def paged_rows(records: list[dict]) -> list[dict]:
    """One row per ``paged_optimizer_run`` record measured on a GPU: the optimizer states' size, where torch says
    they live, what each counter saw them add (GiB), and the step times (median after the first step)."""
    import statistics

    gib = 2**30
    rows = []
    for r in records:
        row = {"optimizer": r["optimizer"], "state GiB": r["state_bytes"] / gib, "paged GiB": r["paged_bytes"] / gib,
               "state tensors' device": ", ".join(r["state_device"]),
               "memory_allocated growth GiB": r["allocated_growth"] / gib,
               "max_memory_allocated growth GiB": r["peak_allocated_growth"] / gib,
               "driver-counted growth GiB": r["driver_growth"] / gib,
               "step s": statistics.median(r["step_s"][1:])}
        if "driver_growth_evicted" in r:
            row.update({"driver-counted, pages moved to host GiB": r["driver_growth_evicted"] / gib,
                        "driver-counted, after the next step GiB": r["driver_growth_after_step"] / gib,
                        "next step s": r["step_s_after_eviction"]})
        rows.append(row)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m llava_nb.lab.paged", description=__doc__.split("\n")[0])
    p.add_argument("--optimizer", required=True, choices=sorted(OPTIMIZERS))
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--evict", action="store_true", help="move the paged states to host memory, then step once more")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    rec = paged_optimizer_run(a.optimizer, a.width, a.layers, a.steps, a.device, evict=a.evict)
    rec["versions"] = versions()
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps({k: v for k, v in rec.items() if k not in ("losses", "versions")}))


if __name__ == "__main__":
    main()

"""A training plan before any work: the largest micro-batch per GPU that fits, and the accumulation that keeps the
global batch. Pure Python: the memory calculator (``estimate_memory``, the same method objects ``train()`` runs)
decides, so ``python -m llava_nb plan`` answers at once and a plan that cannot fit stops before any weights load.

    global batch = GPUs x micro-batch x accumulation steps

The micro-batch is the largest one that fits (peak below the card's memory less the headroom) and divides the
global batch over the GPUs; the accumulation makes up the rest.

Offloading methods also need host memory (``MemoryEstimate.cpu_gib``: ``memory.host``'s terms, every rank's pinned
partitions and flat buffers, fp32 master weights, gradients and AdamW states on the machine). Given the machine's
memory, the plan refuses one whose host part would not fit with ``HOST_HEADROOM`` kept free for the processes
themselves (about 0.9 GB each: Python, torch, the CUDA context, measured in ``data/gpu/host_gpu.jsonl``) and their
data. On a 1xH200 machine with 125 GiB of RAM, ``zero3-offload`` of llava-1.5-7b was killed by the kernel's
out-of-memory killer (``data/gpu/train_full.jsonl``); its host terms come to 160 GiB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import LlavaNbError
from ..memory.estimate import DEFAULT_HEADROOM, H100_80GB_GIB, estimate_memory, max_micro_batch
from ..methods.registry import get_method

#: the fraction of host memory a plan keeps free (module docstring)
HOST_HEADROOM = 0.10
#: what the error suggests when nothing fits, cheapest change first
ALTERNATIVES = ("zero3+lora", "lora", "qlora", "zero3-offload")


class PlanError(LlavaNbError):
    """No micro-batch of this method fits these GPUs, or the global batch cannot be split over them."""


@dataclass(frozen=True)
class Plan:
    model: str
    method: str
    gpus: int
    gpu_memory_gib: float
    headroom: float
    global_batch: int
    seq_len: int
    grad_checkpointing: bool
    micro_batch: int
    accumulation: int
    largest_that_fits: int  # the calculator's largest micro-batch (0: none)
    steady_gib: float
    peak_gib: float
    fits: bool
    chosen_by: str  # "calculator" or "override"
    host_gib: float = 0.0  # host memory the method needs on the machine (offload), 0 without
    host_memory_gib: float | None = None  # the machine's, where known (then checked)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line a run prints before it starts."""
        verdict = "fits" if self.fits else "DOES NOT FIT"
        return (f"plan: {self.model}, {self.method}, bf16, checkpointing {'on' if self.grad_checkpointing else 'off'}; "
                f"micro-batch {self.micro_batch} x {self.gpus} GPU(s) x {self.accumulation} accumulation = "
                f"{self.global_batch} (micro-batch by {self.chosen_by}); predicted per GPU: steady "
                f"{self.steady_gib:.1f} GiB, peak {self.peak_gib:.1f} GiB of {self.gpu_memory_gib:g} GiB ({verdict})"
                + (f"; host {self.host_gib:.1f} GiB" + (f" of {self.host_memory_gib:.0f} GiB" if self.host_memory_gib
                                                         else "") if self.host_gib else ""))


def make_plan(model, method: str, gpus: int = 1, gpu_memory_gib: float = H100_80GB_GIB, global_batch: int = 128,
              seq_len: int = 2048, grad_checkpointing: bool = True, headroom: float = DEFAULT_HEADROOM,
              micro_batch: int | None = None, image_size=None, host_memory_gib: float | None = None,
              attention: str = "sdpa") -> Plan:
    """The plan for training ``model`` with ``method`` on ``gpus`` cards of ``gpu_memory_gib`` each, on a machine
    with ``host_memory_gib`` of RAM (None: not checked), with the LLM's ``attention`` kernel ("sdpa" or "eager").

    ``micro_batch`` overrides the calculator's choice (the plan then says whether it fits). Raises ``PlanError``
    when nothing fits, naming what would, and when an offloading method's host part does not fit."""
    name = get_method(method).name
    _check(gpus, gpu_memory_gib, global_batch, headroom, micro_batch)
    if host_memory_gib is not None and not host_memory_gib > 0:
        raise PlanError(f"host_memory_gib must be positive, got {host_memory_gib!r}")
    kw = dict(gpus=gpus, seq_len=seq_len, grad_checkpointing=grad_checkpointing, image_size=image_size,
              attention=attention)
    largest = max_micro_batch(model, name, gpu_memory_gib, headroom, limit=max(1, global_batch // gpus), **kw)
    if micro_batch is None:
        if largest == 0:
            raise PlanError(_nothing_fits(model, name, gpu_memory_gib, headroom, **kw))
        micro = next((m for m in range(largest, 0, -1) if global_batch % (gpus * m) == 0), None)
        if micro is None:
            raise PlanError(f"global batch {global_batch} cannot be split over {gpus} GPUs; use a multiple of {gpus}")
    elif global_batch % (gpus * micro_batch):
        raise PlanError(f"global batch {global_batch} is not a multiple of {gpus} GPUs x micro-batch {micro_batch}; "
                        f"change the batch size or the micro-batch")
    else:
        micro = micro_batch
    est = estimate_memory(model, name, micro_batch=micro, **kw)
    _check_host(model, name, est.cpu_gib, host_memory_gib, gpu_memory_gib, headroom, kw)
    return Plan(model=est.model, method=name, gpus=gpus, gpu_memory_gib=gpu_memory_gib, headroom=headroom,
                global_batch=global_batch, seq_len=seq_len, grad_checkpointing=grad_checkpointing, micro_batch=micro,
                accumulation=global_batch // (gpus * micro), largest_that_fits=largest,
                steady_gib=est.steady_gib, peak_gib=est.peak_gib, fits=est.fits(gpu_memory_gib, headroom),
                chosen_by="calculator" if micro_batch is None else "override", host_gib=est.cpu_gib,
                host_memory_gib=host_memory_gib)


def _check_host(model, method: str, need: float, host: float | None, gpu_memory_gib: float, headroom: float,
                kw: dict) -> None:
    """A ``PlanError`` when the host part ``need`` (GiB) exceeds ``host`` less ``HOST_HEADROOM``."""
    if not need or host is None or need <= host * (1 - HOST_HEADROOM):
        return
    options = _other_methods(model, method, gpu_memory_gib, headroom, kw, on_gpu_only=True)
    raise PlanError(f"{method} needs about {need:.1f} GiB of host memory for what it offloads, more than this "
                    f"machine's {host:.0f} GiB less {HOST_HEADROOM:.0%} kept free; use a machine with more RAM"
                    + ("; would fit: " + ", ".join(options) if options else ""))


def _other_methods(model, method: str, gpu_memory_gib: float, headroom: float, kw: dict,
                   on_gpu_only: bool = False) -> list[str]:
    """``"name (peak GiB)"`` of every method in ``ALTERNATIVES`` but ``method`` that fits at micro-batch 1 (with
    ``on_gpu_only``, only those that offload nothing to the host)."""
    fits = []
    for other in ALTERNATIVES:
        est = estimate_memory(model, other, micro_batch=1, **kw) if other != method else None
        if est is not None and est.fits(gpu_memory_gib, headroom) and not (on_gpu_only and est.cpu_gib):
            fits.append(f"{other} ({est.peak_gib:.1f} GiB per GPU)")
    return fits


def _check(gpus, gpu_memory_gib, global_batch, headroom, micro_batch) -> None:
    for label, value in (("gpus", gpus), ("global_batch", global_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PlanError(f"{label} must be a whole number >= 1, got {value!r}")
    if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1):
        raise PlanError(f"micro_batch must be a whole number >= 1, got {micro_batch!r}")
    if not gpu_memory_gib > 0:
        raise PlanError(f"gpu_memory_gib must be positive, got {gpu_memory_gib!r}")
    if not 0 <= headroom < 1:
        raise PlanError(f"headroom is the fraction of memory kept free, in [0, 1); got {headroom!r}")


def _nothing_fits(model, method: str, gpu_memory_gib: float, headroom: float, gpus: int, **kw) -> str:
    """One line: the peak at micro-batch 1, and the changes that would fit, with their peaks."""
    usable = gpu_memory_gib * (1 - headroom)
    peak = estimate_memory(model, method, gpus=gpus, micro_batch=1, **kw).peak_gib
    options = _other_methods(model, method, gpu_memory_gib, headroom, {**kw, "gpus": gpus})
    for more in (2 * gpus, 4 * gpus, 8 * gpus):
        est = estimate_memory(model, method, gpus=more, micro_batch=1, **kw)
        if est.fits(gpu_memory_gib, headroom):
            options.append(f"{method} on {more} GPUs ({est.peak_gib:.1f} GiB)")
            break
    if kw.get("seq_len", 2048) > 1024:
        est = estimate_memory(model, method, gpus=gpus, micro_batch=1, **{**kw, "seq_len": 1024})
        if est.fits(gpu_memory_gib, headroom):
            options.append(f"sequences of 1024 tokens ({est.peak_gib:.1f} GiB)")
    would = "; would fit: " + ", ".join(options) if options else "; nothing listed fits either: use more GPUs"
    return (f"{method} does not fit {gpus} GPU(s) of {gpu_memory_gib:g} GiB even at micro-batch 1: peak "
            f"{peak:.1f} GiB > {usable:.1f} GiB usable ({headroom:.0%} headroom){would}")

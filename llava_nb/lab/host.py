"""Host memory, measured: the resident set (RSS) of a process that loads a checkpoint or trains with ZeRO-3 offload.

``rss()`` is the resident set now (``VmRSS``), ``peak_rss()`` the most it has been (``ru_maxrss``). Each measure runs
in a fresh process, so that its baseline (Python, torch, transformers and, on a GPU, the CUDA context) is its own::

    python -m llava_nb.lab.host load --folder CKPT --device cuda --out host.jsonl
    torchrun --standalone --nproc-per-node 1 -m llava_nb.lab.host offload --model llava-1.5-7b --layers 8 \\
        --out host.jsonl

``load`` reads a llava-hf checkpoint with ``load_model`` (bf16) onto ``--device``; ``offload`` sets the model up for
``zero3-offload`` as ``lab.measure`` does (DeepSpeed moves the bf16 partitions and the optimizer to the host) and runs
two steps. Each appends one JSON line: the RSS before, after and at its peak, and the calculator's prediction
(``llava_nb.memory.host``) of what the work adds to the baseline.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from pathlib import Path

import torch


def rss() -> int:
    """Bytes resident now (``VmRSS`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (host memory is measured on Linux)")


def peak_rss() -> int:
    """The most bytes this process has had resident (``ru_maxrss``, kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _pinned() -> dict:
    """PyTorch's caching host allocator (pinned memory): bytes it has allocated and reserved (GPUs only)."""
    if not torch.cuda.is_available() or not hasattr(torch.cuda, "host_memory_stats"):
        return {}
    stats = torch.cuda.host_memory_stats()
    return {k: v for k, v in stats.items() if k.startswith(("allocated_bytes.current", "reserved_bytes.current",
                                                             "allocation.current", "segment.current"))}


def _baseline(device: str) -> int:
    """RSS once torch, transformers and (on a GPU) the CUDA context are up: what every training process pays."""
    import transformers  # noqa: F401

    if device.startswith("cuda"):
        torch.zeros(1, device=device)
    return rss()


def measure_load(folder: str, device: str) -> dict:
    from ..memory.host import load_host_terms
    from ..models.architectures import load_model

    base = _baseline(device)
    start = time.perf_counter()
    model = load_model(folder, dtype=torch.bfloat16, device_map={"": device})
    seconds = time.perf_counter() - start
    disk = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
    return {"kind": "load", "folder": Path(folder).name, "device": device, "baseline": base, "after": rss(),
            "peak": peak_rss(), "seconds": round(seconds, 1), "checkpoint_bytes": disk,
            "model_bytes": sum(p.nbytes for p in model.parameters()),
            "predicted": load_host_terms(disk, sum(p.numel() for p in model.parameters()), device)}


def measure_offload(model: str, layers: int, micro_batch: int, seq_len: int, steps: int = 2) -> dict:
    from ..memory.estimate import estimate_memory
    from ..models.architectures import get_config
    from .harness import synthetic_batch
    from .measure import Run, _init_distributed

    config = copy.deepcopy(get_config(model))
    config.text_config.num_hidden_layers = layers
    device = _init_distributed("zero3-offload")
    base = _baseline(str(device))
    run = Run(config, "zero3-offload", device, micro_batch=micro_batch)
    setup = rss()
    batch = synthetic_batch(config, micro_batch, seq_len, device, torch.bfloat16)
    losses, phases = [], []
    for _ in range(steps):  # Run.step, phase by phase: the RSS and the pinned (page-locked) bytes after each
        loss = run.engine(**batch).loss
        phases.append(("forward", rss(), _pinned()))
        run.engine.backward(loss)
        phases.append(("backward", rss(), _pinned()))
        run.engine.step()
        phases.append(("step", rss(), _pinned()))
        losses.append(loss.item())
    from ..memory.host import offload_host_terms
    from ..memory.shapes import method_sizes, model_shapes
    from ..methods.registry import get_method

    est = estimate_memory(config, "zero3-offload", micro_batch=micro_batch, seq_len=seq_len)
    terms = offload_host_terms(method_sizes(model_shapes(config), get_method("zero3-offload")), 1)
    return {"kind": "offload", "model": model, "layers": layers, "micro_batch": micro_batch, "seq_len": seq_len,
            "baseline": base, "after_setup": setup, "pinned_after_setup": _pinned(), "phases": phases, "after": rss(),
            "peak": peak_rss(), "losses": losses,
            "predicted": terms, "calculator_cpu_bytes": est.cpu_gib * 2**30}


def main(argv=None) -> None:
    import os
    import sys

    from .harness import versions

    p = argparse.ArgumentParser(prog="python -m llava_nb.lab.host", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    load = sub.add_parser("load")
    load.add_argument("--folder", required=True)
    load.add_argument("--device", default="cuda")
    off = sub.add_parser("offload")
    off.add_argument("--model", default="llava-1.5-7b")
    off.add_argument("--layers", type=int, required=True, help="LLM blocks (fewer than the model's: a smaller host)")
    off.add_argument("--points", default="1x1024")
    for command in (load, off):
        command.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.kind == "load":
        record = measure_load(a.folder, a.device)
    else:
        micro_batch, seq_len = map(int, a.points.split("x"))
        record = measure_offload(a.model, a.layers, micro_batch, seq_len)
    record["versions"] = versions()
    if int(os.environ.get("RANK", 0)) == 0:
        with open(a.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps({k: v for k, v in record.items() if k != "versions"}), flush=True)
    sys.stdout.flush()
    os._exit(0)  # as lab.measure: no teardown of DeepSpeed's threads at exit


if __name__ == "__main__":
    main()

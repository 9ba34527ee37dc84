"""What machine a measurement ran on: every committed benchmark records it beside its numbers."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict:
    """The cores, CPU (and whether it has bf16 instructions), platform and library versions of this machine."""
    import torch
    import transformers

    from ..training.launch import cpu_has_fast_bf16

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine(),
            "cpu": _cpu_name(), "bf16_instructions": cpu_has_fast_bf16(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.cuda.is_available(), "profile": os.environ.get("LLAVA_NB_PROFILE", "tiny")}


def _cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()

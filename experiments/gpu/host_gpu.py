"""Host memory of loading a 7B and of ZeRO-3 offload, beside the calculator (data/gpu/host_gpu.jsonl).

Writes a random-weight llava-1.5-7b in the llava-hf format (``python -m llava_nb make-checkpoint``), loads it in a
fresh process onto the GPU and onto the CPU, and trains ``zero3-offload`` for two steps on the 7B's architecture cut
to ``--layers`` LLM blocks (the whole 7B needs more host memory than the one-GPU machine has). Every measure is
``python -m llava_nb.lab.host`` in its own process (its RSS baseline, peak and the calculator's terms). Resumable: a
(kind, device, layers) already in the output is skipped::

    python -m experiments.gpu host_gpu --out $OUT/host_gpu.jsonl
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .common import ENV, GPU_DIR, done

DONE = GPU_DIR / "host_gpu.jsonl"
KEY = ("kind", "device", "layers")


def add_arguments(p) -> None:
    p.add_argument("--layers", default="4,8", help="LLM blocks of the offload runs (default: %(default)s)")
    p.add_argument("--out", required=True, help="JSON-lines file the new records are appended to")


def _run(cmd: list[str], timeout: int = 300) -> None:
    import os

    try:
        proc = subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"timed out after {timeout} s: {' '.join(cmd[2:5])}", flush=True)
        return
    tail = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("{") or "Error" in line]
    print(f"rc={proc.returncode}", *tail[-4:], sep="\n  ", flush=True)


def main(a) -> None:
    skip = done(DONE, Path(a.out), key=KEY)
    folder = a.work / "llava-1.5-7b-random"
    host = [sys.executable, "-m", "llava_nb.lab.host"]
    for layers in map(int, a.layers.split(",")):
        if ("offload", None, layers) in skip:
            continue
        _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m",
              "llava_nb.lab.host", "offload", "--layers", str(layers), "--out", a.out])
    for device in ("cuda", "cpu"):
        if ("load", device, None) in skip:
            continue
        if not (folder / "config.json").exists():
            _run([sys.executable, "-m", "llava_nb", "make-checkpoint", "--like", "llava-1.5-7b", "--out", str(folder)],
                 timeout=600)
        _run(host + ["load", "--folder", str(folder), "--device", device, "--out", a.out])

"""Every chapter executed under the full profile on the GPUs (data/gpu/chapters_gpu.jsonl).

As ``make PROFILE=full notebooks`` runs them, each chapter runs alone under ``pytest --nbmake`` (a fresh kernel,
every cell, a 600 s limit per cell), with ``LLAVA_NB_PROFILE=full`` and every GPU visible. The full profile's checkpoints are read from
``LLAVA_NB_CHECKPOINTS``; ``--standins`` first writes random-weight stand-ins there with ``make-checkpoint`` for
the models named (those the chapters load: llava-1.5-7b), so that no download is needed::

    python -m experiments.gpu chapters_gpu --standins llava-1.5-7b --checkpoints /tmp/ckpt --chapters 01,02 --out $OUT/c.jsonl

A chapter that runs past ``--limit`` seconds (a hang) is stopped, and its record says so, with every process's
stacks at that moment; start no chapter later than ``--budget`` seconds into the call, so that budget + limit
fits the machine's limit per command.

A record per chapter: pass or fail (and the start and end of the failure report), wall time, the GPU count, and the peak memory
used on each GPU while the chapter ran (``nvidia-smi``'s ``memory.used``, sampled every 0.2 s: it includes each
process's CUDA context, so it is what the GPU had in use, not the allocator's figure). Resumable: a chapter already
recorded as passed for this GPU count, in data/gpu/chapters_gpu.jsonl or ``--out``, is skipped. A failed chapter's
whole report (every process's stderr: a crash's fatal-signal stack too) is written beside ``--out``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .common import ENV, GPU_DIR, REPO_ROOT, append

DONE = GPU_DIR / "chapters_gpu.jsonl"
KEY = ("chapter", "gpus", "profile")


def add_arguments(p) -> None:
    p.add_argument("--chapters", help="comma-separated chapter prefixes, e.g. 01,04 (default: every chapter)")
    p.add_argument("--checkpoints", required=True, help="the LLAVA_NB_CHECKPOINTS folder")
    p.add_argument("--standins", default="", metavar="NAMES",
                   help="comma-separated models (e.g. llava-1.5-7b) to write a stand-in for where it is missing")
    p.add_argument("--budget", type=float, default=240, help="seconds: start no chapter after this")
    p.add_argument("--limit", type=float, default=300,
                   help="seconds one chapter may run; then every process of it prints its stacks and is stopped")
    p.add_argument("--out", required=True, help="JSON-lines file the new records are appended to")


class GpuMemory:
    """The peak of ``nvidia-smi``'s memory.used per GPU (GiB) while the ``with`` block runs."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak, self._stop = every, [], threading.Event()

    def _sample(self) -> list[float]:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout
        return [float(x) / 1024 for x in out.split()]

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = self._sample()
            self.peak = [max(a, b) for a, b in zip(self.peak, now)] if self.peak else now
            self._stop.wait(self.every)

    def __enter__(self):
        import shutil

        self._thread = threading.Thread(target=self._loop, daemon=True)
        if shutil.which("nvidia-smi"):  # no GPUs: no samples, an empty peak
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _standins(root: Path, names: list[str]) -> list[str]:
    """Write (once) a stand-in for each of ``names`` into ``root`` under its Hub id; the names."""
    from llava_nb.models.local import local_path
    from llava_nb.models.specs import hub_id

    made = []
    for name in names:
        folder = local_path(hub_id(name), root)
        if not (folder / "config.json").exists():
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "llava_nb", "make-checkpoint", "--like", name, "--out", str(folder)],
                           check=True, env={**os.environ, **ENV})
            print(f"make-checkpoint {name}: {time.perf_counter() - began:.0f} s", flush=True)
        made.append(name)
    return made


def execute(chapter: Path, env: dict, limit: float) -> tuple[int | None, str, float]:
    """``pytest --nbmake`` on one chapter: (exit code, or None if it ran past ``limit`` s; its output; seconds).

    A chapter past its limit has its kernel's workers, then its kernel, sent SIGABRT (``_stop_with_stacks``): with
    ``PYTHONFAULTHANDLER`` each prints every thread's Python stack to the stderr that pytest captures, and nbmake
    reports the failed cell with it, so a hang's report says where each process waited."""
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "--nbmake", "--nbmake-timeout=600",
                             "-p", "no:cacheprovider", str(chapter)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**env, "PYTHONFAULTHANDLER": "1"}, cwd=REPO_ROOT)
    try:
        out, _ = proc.communicate(timeout=limit)
        return proc.returncode, _plain(out), time.perf_counter() - began
    except subprocess.TimeoutExpired:
        out = _stop_with_stacks(proc)
    return None, _plain(f"ran past its limit of {limit:.0f} s; every process's stacks follow\n{out}"), \
        time.perf_counter() - began


def _stop_with_stacks(proc: subprocess.Popen) -> str:
    """SIGABRT to the kernel's workers, then to the kernel, then to pytest if it has not ended a minute later; kill
    whatever is left; pytest's output."""
    import signal

    import psutil

    pytest, out = psutil.Process(proc.pid), None
    descendants, kernels = pytest.children(recursive=True), pytest.children()
    workers = [p for p in descendants if p not in kernels]
    # the workers first, while the kernel lives: a kernel that dies first ends pytest's report before they print
    for group, wait in ((workers, 3), (kernels, 60), ([proc], 60)):
        for p in group:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            out = proc.communicate(timeout=wait)[0]
            break
    for p in [*descendants, proc]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return out if out is not None else proc.communicate()[0]


def excerpt(report: str, keep: int = 6000) -> str:
    """``report``, or its first and last ``keep`` characters: nbmake's report opens with the failing cell and its
    traceback (and a crashed process's fatal-error stack), and ends with the summary."""
    return report if len(report) <= 2 * keep else f"{report[:keep]}\n[... {len(report) - 2 * keep} characters ...]\n{report[-keep:]}"


def _plain(text: str) -> str:
    """``text`` without terminal colour codes (nbmake prints IPython's coloured tracebacks)."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def main(a) -> None:
    import torch

    from llava_nb.lab.harness import versions

    out, gpus = Path(a.out), torch.cuda.device_count()
    root = Path(a.checkpoints)
    standins = _standins(root, [n for n in a.standins.split(",") if n])
    skip = _passed(DONE, out)
    wanted = [p.strip() for p in a.chapters.split(",")] if a.chapters else None
    chapters = [c for c in sorted((REPO_ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
                if wanted is None or c.name[:2] in wanted]
    env = {**os.environ, **ENV, "LLAVA_NB_PROFILE": "full", "LLAVA_NB_CHECKPOINTS": str(root),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    start = time.perf_counter()
    for chapter in chapters:
        if (chapter.stem, gpus, "full") in skip:
            continue
        if time.perf_counter() - start > a.budget:
            print(f"budget spent: {chapter.stem} and after left for the next call", flush=True)
            break
        with GpuMemory() as memory:
            code, tail, seconds = execute(chapter, env, a.limit)
        record = {"chapter": chapter.stem, "profile": "full", "gpus": gpus, "passed": code == 0,
                  "seconds": round(seconds, 1), "peak_gpu_memory_gib": [round(x, 2) for x in memory.peak],
                  "standins": standins, "versions": versions()}
        if code is None:
            record["timed_out"] = a.limit
        if code != 0:  # the record keeps the report's start and end; the whole of it goes beside --out
            record["error"] = excerpt(tail)
            out.with_name(f"{chapter.stem}-{gpus}gpu.log").write_text(tail)
        append(out, record, show=("chapter", "gpus", "passed", "seconds", "peak_gpu_memory_gib"))


def _passed(*paths: Path) -> set:
    """The (chapter, gpus, profile) of every passed record in ``paths``."""
    import json

    keys = set()
    for path in paths:
        if path.exists():
            keys |= {tuple(r[k] for k in KEY) for r in map(json.loads, path.read_text().splitlines()) if r["passed"]}
    return keys

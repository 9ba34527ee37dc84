"""Time each chapter's execution and record it: ``python -m llava_nb.bench book/*.ipynb`` (``make bench``).

Each notebook runs in a fresh kernel, as ``pytest --nbmake`` and the book build run it, and the wall time of the
whole execution (kernel start included) is written to ``data/benchmarks/chapters.json`` with the machine's facts.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

from .paths import BENCHMARKS_DIR, REPO_ROOT

BUDGET_S = 90.0


def time_notebook(path: Path, timeout: int = 600) -> float:
    """Execute a notebook in a fresh kernel (cwd = its folder) and return the wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - start


def machine() -> dict:
    import torch
    import transformers

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.cuda.is_available(), "profile": os.environ.get("LLAVA_NB_PROFILE", "tiny")}


def main(paths: list[str]) -> int:
    out = BENCHMARKS_DIR / "chapters.json"
    record = json.loads(out.read_text()) if out.exists() else {"chapters": {}}
    record["budget_s"] = BUDGET_S
    record["machine"] = machine()
    record["date"] = date.today().isoformat()
    for p in map(Path, paths):
        seconds = time_notebook(p)
        record["chapters"][p.name] = {"seconds": round(seconds, 1), "within_budget": seconds <= BUDGET_S}
        print(f"{p.name}: {seconds:.1f} s ({'ok' if seconds <= BUDGET_S else 'OVER BUDGET'})", flush=True)
    # keep the other chapters' earlier measurements, drop chapters that no longer exist
    record["chapters"] = {k: v for k, v in sorted(record["chapters"].items()) if (REPO_ROOT / "book" / k).exists()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(v["within_budget"] for v in record["chapters"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

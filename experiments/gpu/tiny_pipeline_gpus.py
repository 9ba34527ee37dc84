"""The tiny pipeline and Accelerate's launchers on all GPUs (data/gpu/tiny_pipeline_2gpu.json).

Run on a GPU machine from the repository root (the book's results came from the device tool's 2-GPU H100/H200
machines)::

    python -m experiments.gpu tiny_pipeline_gpus data/gpu/tiny_pipeline_2gpu.json

It records the GPUs and library versions, which setups still let a process fork CUDA workers (``fork_probe``),
what each launched process sees (rank, device, backend, an all-reduce), an ``accelerate launch`` run (the
multi-machine code path on one machine), and the whole tiny pipeline (stage 1, stage 2, held-out and blank-image
accuracy) from an empty cache, all over NCCL. Without a file, it writes ``data/gpu/tiny_pipeline_gpus.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import GPU_DIR, NO_MULTICAST


def add_arguments(p) -> None:
    p.add_argument("out", nargs="?", default=GPU_DIR / "tiny_pipeline_gpus.json",
                   help="JSON file the record is written to (default: data/gpu/tiny_pipeline_gpus.json)")
    p.add_argument("--who-am-i", metavar="DIR", help="(internal) be one of the processes launch_who_am_i starts")


def set_environment(work: Path) -> None:
    """No NVLink multicast, and the cache in ``work``: before torch and llava_nb are imported."""
    for var, value in NO_MULTICAST.items():
        os.environ.setdefault(var, value)
    os.environ["LLAVA_NB_CACHE"] = str(work / "cache")


def who_am_i(out_dir):
    import torch
    from accelerate import Accelerator

    acc = Accelerator()
    t = torch.tensor([acc.process_index + 1.0], device=acc.device)
    total = acc.reduce(t, "sum").item()
    info = {"rank": acc.process_index, "world_size": acc.num_processes, "device": str(acc.device),
            "backend": torch.distributed.get_backend() if acc.num_processes > 1 else None, "all_reduced_sum": total}
    Path(out_dir, f"rank{acc.process_index}.json").write_text(json.dumps(info))


#: What a process may do before it forks workers that use CUDA, each tried in a fresh interpreter: a forked child
#: then selects GPU 0 and allocates a tensor there (fails with "Cannot re-initialize CUDA in forked subprocess"
#: or a CUDA initialization error when the parent's setup poisoned fork).
FORK_PROBES = {
    "import torch": "import torch",
    "torch.cuda.device_count()": "import torch; torch.cuda.device_count()",
    "torch.cuda.device_count(), NVML-based": "import os; os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'] = '1'; "
                                            "import torch; torch.cuda.device_count()",
    "torch.cuda.is_available()": "import torch; torch.cuda.is_available()",
    "torch.cuda.is_available(), NVML-based": "import os; os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'] = '1'; "
                                            "import torch; torch.cuda.is_available()",
    "import accelerate": "import torch, accelerate",
    "import transformers": "import torch, transformers",
    "import llava_nb.training.api": "import torch, llava_nb.training.api",  # llava_nb sets the NVML-based check
}
CHILD = """
import os, sys, torch
pid = os.fork()
if pid == 0:
    try:
        torch.cuda.set_device(0); torch.ones(1, device="cuda")
        os._exit(0)
    except Exception as err:
        sys.stderr.write(str(err).splitlines()[0]); os._exit(1)
sys.exit(os.waitpid(pid, 0)[1] >> 8)
"""


def fork_probe() -> dict:
    """For each setup in FORK_PROBES: can a forked child still use CUDA after it? (True, or the child's error.)"""
    out = {}
    for name, setup in FORK_PROBES.items():
        p = subprocess.run([sys.executable, "-c", setup + "\n" + CHILD], capture_output=True, text=True)
        out[name] = True if p.returncode == 0 else (p.stderr.strip().splitlines() or ["failed"])[-1][:300]
    return out


def launch_who_am_i(ranks: Path, n: int) -> str:
    """``who_am_i`` on ``n`` processes through ``notebook_launcher`` (fork); where fork fails, as fresh processes
    through ``accelerate launch`` (what ``llava_nb.training.api`` does too). Returns how they were started."""
    from accelerate import notebook_launcher

    try:
        notebook_launcher(who_am_i, (str(ranks),), num_processes=n)
        return "notebook_launcher (fork)"
    except Exception as err:  # the children's error is in the log above
        print(f"notebook_launcher failed ({type(err).__name__}); starting fresh processes instead", flush=True)
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "experiments.gpu",
                    "tiny_pipeline_gpus", "--who-am-i", str(ranks)], check=True)
    return "accelerate launch (fresh processes), after notebook_launcher failed"


def main(a) -> None:
    set_environment(a.work)
    if a.who_am_i:  # a process started by accelerate launch (launch_who_am_i's fallback)
        return who_am_i(a.who_am_i)
    run(a.out, a.work)


def run(out_file: str | Path, work: Path) -> None:
    """The fork probe, the launcher's processes, ``accelerate launch``, the tiny pipeline: one record."""
    probe = fork_probe()
    print("fork probe:", json.dumps(probe), flush=True)
    import torch

    from llava_nb.training.api import train

    n = torch.cuda.device_count()  # torch.cuda.is_initialized() stays False (whether fork still works: the probe)
    ranks = work / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    print("CUDA initialised in the parent before the launcher:", torch.cuda.is_initialized(), flush=True)
    how = launch_who_am_i(ranks, n)
    print("CUDA initialised in the parent after the launcher:", torch.cuda.is_initialized(), flush=True)
    launcher = [json.loads(p.read_text()) for p in sorted(ranks.glob("rank*.json"))]
    start = time.perf_counter()
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                               str(n), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               "-m", "llava_nb", "train", "--model", "tiny-llava-1.5", "--stage", "1", "--max-steps",
                               "4", "--output-dir", str(work / "launched"), "--set", "log_every=0"],
                              capture_output=True, text=True)
    accelerate_launch = {"exit_code": launched.returncode, "seconds": round(time.perf_counter() - start, 1),
                         "last_line": json.loads(launched.stdout.strip().splitlines()[-1]) if launched.returncode == 0
                         else launched.stderr[-2000:]}
    print("CUDA initialised in the parent before train():", torch.cuda.is_initialized(), flush=True)
    start = time.perf_counter()
    result = train("tiny-llava-1.5", 2, num_processes=n, log_every=0)
    wall = time.perf_counter() - start
    import accelerate
    import transformers

    record = {
        "gpu": torch.cuda.get_device_name(0), "gpus": n, "torch": torch.__version__, "cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())), "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "python": sys.version.split()[0], "fork_probe": probe,
        "launcher": launcher, "launcher_started_by": how,
        "accelerate_launch": accelerate_launch,
        "pipeline": {"seconds_wall": round(wall, 1), "seconds_stage2": result["seconds"],
                     "stage1": result.get("stage1"), "steps": result["steps"], "train_loss": result["train_loss"],
                     "losses": result["losses"], "eval_accuracy": result["eval_accuracy"],
                     "eval_blank_accuracy": result["eval_blank_accuracy"], "eval_by_type": result["eval_by_type"],
                     "num_processes": result["num_processes"], "device": result["device"]},
        "llava_nb_hyperparams": result["hyperparams"],
    }
    Path(out_file).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "pipeline"} | {"accuracy": result["eval_accuracy"]}))

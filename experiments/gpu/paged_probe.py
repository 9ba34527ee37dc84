"""Which parts of bitsandbytes' paged memory work on this GPU stack (data/gpu/paged_probe.jsonl).

The first GPU run of ``peft_gpu`` (``data/gpu/peft_gpu.jsonl``) found both paged optimizers dying at their first step
with "Error invalid device ordinal at line 568 in file /src/csrc/pythonInterface.cpp" (bitsandbytes 0.50.2, CUDA 13).
The library exits the process on that error, so each step below runs in a fresh process and records its exit
status, its JSON output (GiB as torch's allocator and as the driver count them) and the end of its stderr::

    python -m experiments.gpu paged_probe --out $OUT/paged_probe.jsonl

Steps: the device's managed-memory attributes; a 1 GiB managed buffer from ``get_paged`` filled on the GPU; the
same moved to host memory and back with ``prefetch_tensor``; ``PagedAdamW`` on a Linear at ``cuda:0``. Not
resumable: each call appends one record per step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

COMMON = r"""
import ctypes, json, torch
import bitsandbytes.functional as F
GiB = 2**30
def used():
    torch.cuda.synchronize(); free, total = torch.cuda.mem_get_info(); return (total - free) / GiB
def alloc():
    return torch.cuda.memory_allocated() / GiB
torch.zeros(1, device="cuda")  # the CUDA context first, so that it is not counted below
out = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name()}
"""

STEPS = {
    "attributes": r"""
import bitsandbytes
v = ctypes.c_int()
lib = ctypes.CDLL("libcuda.so.1")
for name, attr in (("concurrent_managed_access", 89), ("pageable_memory_access", 88), ("managed_memory", 83)):
    lib.cuDeviceGetAttribute(ctypes.byref(v), attr, 0)
    out[name] = v.value
out["bitsandbytes"] = bitsandbytes.__version__
""",
    "get_paged and fill": r"""
u0, a0 = used(), alloc()
t = F.get_paged(GiB // 4, dtype=torch.float32, device=torch.device("cuda", 0))
out["after_get_paged"] = {"driver": used() - u0, "allocator": alloc() - a0, "device": str(t.device)}
F.fill(t, 0)
out["after_fill"] = {"driver": used() - u0, "allocator": alloc() - a0}
""",
    "prefetch to host and back": r"""
u0, a0 = used(), alloc()
t = F.get_paged(GiB // 4, dtype=torch.float32, device=torch.device("cuda", 0))
F.fill(t, 0)
out["after_fill"] = {"driver": used() - u0, "allocator": alloc() - a0}
F.prefetch_tensor(t, to_cpu=True)
out["after_prefetch_to_host"] = {"driver": used() - u0, "allocator": alloc() - a0}
F.prefetch_tensor(t)
out["after_prefetch_to_gpu"] = {"driver": used() - u0, "allocator": alloc() - a0}
""",
    "PagedAdamW step": r"""
import bitsandbytes as bnb
lin = torch.nn.Linear(8192, 8192, bias=False, device="cuda:0")  # 0.25 GiB of fp32 weights
opt = bnb.optim.PagedAdamW(lin.parameters(), lr=1e-4)
u0, a0 = used(), alloc()
lin(torch.randn(16, 8192, device="cuda:0")).pow(2).mean().backward()
opt.step()
out["after_step"] = {"driver": used() - u0, "allocator": alloc() - a0,
                     "state_device": str(opt.state[lin.weight]["state1"].device)}
""",
}


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="JSON-lines file the records are appended to")


def main(a) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, code in STEPS.items():
        script = COMMON + code + "\nprint('RESULT ' + json.dumps(out))\n"
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        result = next((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
        rec = {"kind": "paged probe", "name": name, "rc": proc.returncode, "result": result,
               "output_tail": (proc.stdout + proc.stderr)[-1500:]}
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps({k: rec[k] for k in ("name", "rc", "result")}), flush=True)

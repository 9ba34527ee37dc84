"""The ZeRO-3 trap from LLaVA's issue tracker, reproduced: weights loaded into a model that ZeRO-3 has already
partitioned come out as empty ``torch.Size([0])`` shards, and the fix.

    torchrun --standalone --nproc-per-node 2 -m llava_nb.lab.zero3_trap OUT.json

Under ``deepspeed.zero.Init`` (which transformers uses whenever a ZeRO-3 config is active) every parameter is
partitioned as it is created: the module's ``weight`` is an empty tensor, its real shape is in ``ds_shape`` and this
rank's slice in ``ds_tensor``. ``load_state_dict`` then fails with size mismatches (or, with ``strict=False``, loads
nothing). ``deepspeed.zero.GatheredParameters(params, modifier_rank=0)`` makes the parameters whole for the duration
of a block and re-partitions what rank 0 wrote.
"""

from __future__ import annotations

import json
import os
import sys

import torch


def main(out: str) -> None:
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank()
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    with deepspeed.zero.Init(config_dict_or_path=config):
        layer = torch.nn.Linear(64, 32)
    report = {"shape seen by the module": list(layer.weight.shape), "real shape (ds_shape)": list(layer.weight.ds_shape),
              "this rank's shard (ds_tensor)": list(layer.weight.ds_tensor.shape)}
    trained = {"weight": torch.full((32, 64), 0.5), "bias": torch.zeros(32)}
    try:
        layer.load_state_dict(trained)
        report["plain load_state_dict"] = "loaded"
    except RuntimeError as err:
        report["plain load_state_dict"] = next(line.strip() for line in str(err).splitlines() if "size mismatch" in line)
    with deepspeed.zero.GatheredParameters(list(layer.parameters()), modifier_rank=0):
        layer.load_state_dict(trained)
    with deepspeed.zero.GatheredParameters(list(layer.parameters())):
        report["weight sum after GatheredParameters load (expected 1024)"] = float(layer.weight.sum())
    if rank == 0:
        with open(out, "w") as f:
            json.dump(report, f, indent=1)
    torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)  # see llava_nb.lab.measure: skip the C++ teardown of the CPU collectives


def run_zero3_trap(processes: int = 2, timeout: int = 300) -> dict:
    """Run ``main`` in ``processes`` fresh processes (``llava_nb.lab.harness.torchrun``) and return rank 0's report."""
    import tempfile
    from pathlib import Path

    from .harness import torchrun

    out = Path(tempfile.mkdtemp(prefix="llava-nb-zero3-")) / "report.json"
    torchrun(["llava_nb.lab.zero3_trap", str(out)], processes, timeout)
    return json.loads(out.read_text())


if __name__ == "__main__":
    main(sys.argv[1])

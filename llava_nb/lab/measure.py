"""Measure what a training recipe really holds, per rank: the ground truth ``estimate_memory`` is checked against.

Run it under ``torchrun`` (one process per GPU, or per CPU "rank" over gloo)::

    torchrun --standalone --nproc-per-node 2 -m llava_nb.lab.measure --model tiny-llava-1.5 --method zero3 --points 2x256

Each rank builds the model with random weights, sets ``method`` up as ``train()`` does (``methods.setup.setup_model``, bf16 mixed precision) and wraps it in the
method's engine, and runs ``steps`` training steps per (micro_batch, seq_len) point on synthetic batches (image tokens
included in ``seq_len``). It reports, per rank:

* ``holdings``: bytes of each model state read from the engine's own tensors (DeepSpeed's partitions, FSDP2's
  DTensor shards, the optimizer's states), taken after ``optimizer.step()`` and ``zero_grad(set_to_none=True)``;
  ``gradients`` are the bytes of the gradients the torch optimizer reads at its step on this rank (the largest
  sub-group's, where ZeRO-3 steps in sub-groups);
* on CUDA, ``steady`` = ``torch.cuda.memory_allocated()`` after the last step and ``peak`` =
  ``torch.cuda.max_memory_allocated()`` over steps 1..``steps`` (reset after set-up); an out-of-memory error is
  recorded as ``oom`` instead.

Rank 0 appends one JSON line per point to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from .harness import gather, synthetic_batch, torchrun, versions
from .holdings import grad_probe, nbytes, optimizer_state_bytes
from ..methods.deepspeed import deepspeed_config, llm_hidden_size
from ..methods.fsdp import shard_fsdp
from ..methods.registry import get_method
from ..methods.setup import load_kwargs, setup_model


class _PhaseClock:
    """Seconds between marks, written into ``phases`` (nothing is timed when it is None)."""

    def __init__(self, device: torch.device, phases: dict | None):
        self.cuda, self.phases = device.type == "cuda", phases
        self.last = self._now()

    def _now(self) -> float:
        if self.phases is not None and self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def mark(self, name: str) -> None:
        if self.phases is None:
            return
        now = self._now()
        self.phases[name] = round(now - self.last, 4)
        self.last = now


class Run:
    """One rank's model, optimizer and step function for ``method``; ``holdings()`` reads its states."""

    def __init__(self, model_name: str, method: str, device: torch.device, grad_checkpointing: bool = True,
                 lr: float = 1e-5, zero_overrides: dict | None = None, micro_batch: int = 1, seed: int = 0,
                 checkpoint_dir: str | None = None):
        from ..models.architectures import build_model, get_config

        self.method, self.device = get_method(method), device
        self.world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        config = get_config(model_name) if isinstance(model_name, str) else model_name  # a name, or a config
        self.config = config
        torch.manual_seed(seed)
        engine = self.method.engine
        # the weights straight in the method's dtype: a 7B in fp32 is 28 GB per rank
        dtype = load_kwargs(self.method, "bf16").get("dtype", torch.float32)
        if self.method.adapter.name != "none":  # through from_pretrained, the path a real checkpoint takes
            model = _load_lora_base(model_name, self.method, device, checkpoint_dir, seed)
        else:
            model = build_model(config, device=device, dtype=dtype, seed=seed)
        model = setup_model(model, self.method, mixed_precision="bf16", gradient_checkpointing=grad_checkpointing)
        params = [p for p in model.parameters() if p.requires_grad]
        self.engine, self.autocast = None, engine.kind == "ddp"  # torch DDP computes in bf16 by autocast
        self.dtype = torch.bfloat16 if engine.kind == "deepspeed" else torch.float32
        if engine.kind == "deepspeed":
            import deepspeed

            ds = deepspeed_config(engine.name, llm_hidden_size(config), micro_batch, self.world,
                                  **(zero_overrides or {}))
            self.basic = torch.optim.AdamW(params, lr=lr)
            self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=self.basic, config=ds)
            self.model = self.engine.module
        else:
            if engine.kind == "fsdp":
                model = shard_fsdp(model)
                params = [p for p in model.parameters() if p.requires_grad]  # FSDP2's DTensor parameters
            elif self.world > 1:
                model = torch.nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None)
            self.model = model
            self.optimizer = self.basic = torch.optim.AdamW(params, lr=lr)
        self.grads = grad_probe(self.basic)

    def step(self, batch: dict, phases: dict | None = None) -> float:
        """One training step; with ``phases`` (a dict), the seconds of forward, backward and optimizer step are
        added to it (the device synchronised at each boundary)."""
        clock = _PhaseClock(self.device, phases)
        if self.engine is not None:
            loss = self.engine(**batch).loss
            clock.mark("forward")
            self.engine.backward(loss)
            clock.mark("backward")
            self.engine.step()  # DeepSpeed's step zeroes the gradients itself
        else:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss = self.model(**batch).loss
            clock.mark("forward")
            loss.backward()
            clock.mark("backward")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        clock.mark("step")
        return loss.detach().item()

    def holdings(self) -> dict:
        """Bytes this rank holds of each model state, read from the engine's tensors."""
        params = list(self.model.parameters())
        out = {"gradients": self.grads.get("gradients", 0), "optimizer_states": optimizer_state_bytes(self.basic)}
        if self.engine is not None:
            opt = self.optimizer
            name = type(opt).__name__
            if name == "DeepSpeedZeroOptimizer_Stage3":
                out["weights"] = nbytes([p.ds_tensor for p in params]) + nbytes(
                    [p.data for p in params if getattr(p, "ds_persist", False)])
                out["master_weights"] = nbytes(opt.fp32_partitioned_groups_flat)
            else:
                out["weights"] = nbytes([p.data for p in params])
                master = {"DeepSpeedZeroOptimizer": "single_partition_of_fp32_groups",
                          "BF16_Optimizer": "fp32_groups_flat_partition", "FP16_Optimizer": "fp32_groups_flat",
                          "FP16_UnfusedOptimizer": "fp32_groups"}[name]
                masters = getattr(opt, master)
                out["master_weights"] = nbytes(t for group in masters for t in (group if isinstance(group, list) else [group]))
            out["optimizer"] = name
        elif self.method.engine.kind == "fsdp":
            out["weights"] = nbytes(params)  # fp32 shards: also the master weights
            out["master_weights"] = 0
        else:
            out["weights"] = nbytes([p.data for p in params if not p.requires_grad])
            out["trainable_weights"] = nbytes([p.data for p in params if p.requires_grad])
            out["master_weights"] = 0
        return out


def _load_lora_base(model_name: str, method, device, checkpoint_dir: str | None, seed: int):
    """The base of a LoRA method in its dtype (bf16; NF4 for QLoRA: ``methods.setup.load_kwargs``), loaded through
    ``from_pretrained`` from a random-weight checkpoint saved (safetensors) to ``checkpoint_dir``, the path a real
    checkpoint takes."""
    from ..models.architectures import build_model, load_model
    from ..paths import CACHE_DIR

    folder = Path(checkpoint_dir or CACHE_DIR / "measure" / f"{model_name}-random-seed{seed}")
    rank = int(os.environ.get("LOCAL_RANK", 0))
    if not (folder / "config.json").exists() and rank == 0:
        build_model(model_name, device=device, dtype=torch.bfloat16, seed=seed).save_pretrained(folder)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return load_model(folder, device_map={"": device}, **load_kwargs(method, "bf16"))


def _init_distributed(method: str) -> torch.device:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "WORLD_SIZE" in os.environ:
        if get_method(method).engine.kind == "deepspeed":
            import deepspeed

            if not deepspeed.comm.is_initialized():  # wraps an existing torch process group if there is one
                deepspeed.init_distributed(dist_backend=backend)
        elif not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return device


def measure(model_name: str, method: str, points: list[tuple[int, int]], steps: int = 3,
            grad_checkpointing: bool = True, zero_overrides: dict | None = None, cap_gib: float | None = None,
            checkpoint_dir: str | None = None, seed: int = 0, phase_steps: int = 0) -> list[dict]:
    """Run ``method`` at each (micro_batch, seq_len) point on this rank; return one record per point. The last
    ``phase_steps`` steps of each point are also timed phase by phase (``phase_s``)."""
    device = _init_distributed(method)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    cuda = device.type == "cuda"
    if cuda and cap_gib:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total), device)
    base = {"model": model_name, "method": method, "gpus": world, "grad_checkpointing": grad_checkpointing,
            "zero_overrides": zero_overrides or {}, "cap_gib": cap_gib, "device": str(device.type),
            "versions": versions(), "node": platform.node()}
    records, run = [], None
    start = time.perf_counter()
    try:
        run = Run(model_name, method, device, grad_checkpointing, zero_overrides=zero_overrides,
                  micro_batch=max(b for b, _ in points), seed=seed, checkpoint_dir=checkpoint_dir)
        setup_s = time.perf_counter() - start
    except torch.OutOfMemoryError as err:
        return [{**base, "micro_batch": b, "seq_len": s, "oom": True, "oom_at": "setup", "error": str(err)[:300]}
                for b, s in points]
    for micro_batch, seq_len in points:
        rec = {**base, "micro_batch": micro_batch, "seq_len": seq_len, "setup_s": round(setup_s, 2), "oom": False}
        try:
            batch = synthetic_batch(run.config, micro_batch, seq_len, device, run.dtype, seed=seed)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            times, losses, phases = [], [], []
            for i in range(steps):
                t0 = time.perf_counter()
                split = {} if phase_steps and i >= steps - phase_steps else None
                losses.append(run.step(batch, split))
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                if split is not None:
                    phases.append(split)
            rec.update(losses=losses, step_s=times)
            if phases:  # the last steps again, each split into forward / backward / optimizer step
                rec["phase_s"] = phases
            if cuda:
                rec.update(steady=torch.cuda.memory_allocated(device), peak=torch.cuda.max_memory_allocated(device))
            rec["holdings"] = run.holdings()
        except torch.OutOfMemoryError as err:
            rec.update(oom=True, oom_at="step", error=str(err)[:300])
            if run.engine is None:
                run.optimizer.zero_grad(set_to_none=True)
            del err
            if cuda:
                torch.cuda.empty_cache()
        records.append(rec)
    del run
    if cuda:
        torch.cuda.empty_cache()
    return records


def run_measure(model: str, methods: str, points: str, processes: int = 2, zero: dict | None = None,
                timeout: int = 600) -> list[dict]:
    """``python -m llava_nb.lab.measure`` in fresh processes (see ``torchrun``); returns its records."""
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="llava-nb-measure-")) / "runs.jsonl"
    args = ["llava_nb.lab.measure", "--model", model, "--method", methods, "--points", points, "--out", str(out)]
    for key, value in (zero or {}).items():
        args += ["--zero", f"{key}={json.dumps(value)}"]
    torchrun(args, processes, timeout)
    records = {}  # a retried run appends again: keep the last record per (method, point)
    for rec in map(json.loads, out.read_text().splitlines()):
        records[(rec["method"], rec["micro_batch"], rec["seq_len"])] = rec
    return list(records.values())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m llava_nb.lab.measure", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True, help="one method, or several separated by commas")
    p.add_argument("--points", default="1x2048", help="comma-separated MICRO_BATCHxSEQ_LEN")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--no-grad-checkpointing", action="store_true")
    p.add_argument("--zero", action="append", default=[], help="KEY=VALUE for zero_optimization")
    p.add_argument("--cap-gib", type=float, default=None, help="cap each GPU at this many GiB (80 GB H100: 79.18)")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--phase-steps", type=int, default=0, help="time the last N steps phase by phase")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    points = [tuple(int(x) for x in s.split("x")) for s in a.points.split(",")]
    zero = {k: json.loads(v) for k, v in (z.split("=", 1) for z in a.zero)}
    records = []
    for method in a.method.split(","):  # several methods share one process group (and one start-up)
        records += gather(measure(a.model, method, points, a.steps, not a.no_grad_checkpointing, zero, a.cap_gib,
                                  a.checkpoint_dir, phase_steps=a.phase_steps))
    if int(os.environ.get("RANK", 0)) == 0:
        with open(a.out, "a") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        for rec in records:
            print(json.dumps({k: rec.get(k) for k in ("method", "gpus", "micro_batch", "seq_len", "oom", "steady",
                                                       "peak")}))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    # Leave without tearing the process group and DeepSpeed's CPU communication threads down: their C++ teardown at
    # interpreter exit now and then aborts a rank ("terminate called without an active exception", SIGABRT) after
    # all the work is done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

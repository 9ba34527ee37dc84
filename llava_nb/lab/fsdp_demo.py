"""FSDP2 on the tiny LLaVA, looked at from inside each rank: the DTensor shards, the collectives of one training
step on a timeline, and two traps.

    torchrun --standalone --nproc-per-node 2 -m llava_nb.lab.fsdp_demo OUT_DIR

Every rank writes ``OUT_DIR/rank<N>.json``:

* ``shards``: for a few parameters, the global shape, this rank's local shape, the placement (``Shard(0)``: rows
  split over the ranks) and dtype; and the bytes of every shard this rank holds;
* ``timeline``: one training step under ``torch.profiler``; FSDP2 names its work with ``record_function`` ranges
  (``FSDP::all_gather (model.language_model.layers.0)``, ``FSDP::post_backward_reduce (...)``, ...), so each
  range's start and end (ms from the step's start) says when each block's parameters were gathered and its
  gradients reduce-scattered;
* ``whole_tower``: the error of a forward after ``fully_shard`` on the whole vision tower instead of its layers;
* ``unused``: with the ViT trainable, what its last layer gets (it runs, but LLaVA reads layer -2, so its output is
  never used): no
  gradient, no collective, and no hang (DDP needs ``find_unused_parameters`` for the same model).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

SHOWN = ("model.language_model.embed_tokens.weight", "model.language_model.layers.0.self_attn.q_proj.weight",
         "model.language_model.layers.0.input_layernorm.weight", "model.vision_tower.encoder.layers.0.mlp.fc1.weight",
         "model.multi_modal_projector.linear_1.weight", "lm_head.weight")


def _model(unfreeze_vision: bool = False):
    from ..models.architectures import build_model
    from ..methods.fsdp import shard_fsdp
    from ..methods.stages import freeze_for_stage

    model = build_model("tiny-llava-1.5", seed=0)
    freeze_for_stage(model, "stage2")
    if unfreeze_vision:
        model.model.vision_tower.requires_grad_(True)
    return shard_fsdp(model)  # fully_shard per ViT and LLM layer, then the root; bf16 compute, fp32 reduce


def _batch(model):
    from .harness import synthetic_batch

    return synthetic_batch(model.config, 2, 64, torch.device("cpu"))


def shards() -> dict:
    model = _model()
    rows = []
    for name, p in model.named_parameters():
        if name in SHOWN:
            rows.append({"parameter": name, "global shape": list(p.shape), "local shape": list(p.to_local().shape),
                         "placement": str(p.placements[0]), "dtype": str(p.dtype).replace("torch.", ""),
                         "trainable": p.requires_grad})
    held = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    return {"rows": rows, "bytes_held": held, "bytes_total": sum(p.numel() * p.element_size() for p in model.parameters())}


def timeline() -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    model = _model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = _batch(model)
    model(**batch).loss.backward()  # a first step outside the profile: lazy initialisation
    opt.step()
    opt.zero_grad()
    torch.distributed.barrier()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**batch).loss.backward()
        opt.step()
    events = [e for e in prof.events() if e.name.startswith("FSDP::")]
    start = min(e.time_range.start for e in prof.events())
    return [{"name": e.name, "start_ms": (e.time_range.start - start) / 1000, "end_ms": (e.time_range.end - start) / 1000}
            for e in sorted(events, key=lambda e: e.time_range.start)]


def whole_tower() -> str:
    from torch.distributed.fsdp import fully_shard

    from ..models.architectures import build_model
    from ..models.params import model_parts

    model = build_model("tiny-llava-1.5", seed=0)
    parts = model_parts(model)
    fully_shard(parts["vision_tower"])  # the trap: the tower as one unit
    for layer in parts["language_model"].layers:
        fully_shard(layer)
    fully_shard(model)
    try:
        model(**_batch(model))
    except Exception as err:  # noqa: BLE001 - the error is what this demonstrates
        return f"{type(err).__name__}: {err}"
    return "no error"


def unused() -> dict:
    model = _model(unfreeze_vision=True)
    tower = model.model.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    model(**_batch(model)).loss.backward()
    grad = lambda layer: [p.grad is not None for p in layer.parameters()]
    return {"vit layers": len(layers), "last layer (unused) has gradients": any(grad(layers[-1])),
            "layer -2 has gradients": all(grad(layers[-2]))}


def main(out_dir: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    torch.manual_seed(0)
    report = {"rank": rank, "world_size": torch.distributed.get_world_size(), "shards": shards(),
              "timeline": timeline(), "whole_tower": whole_tower(), "unused": unused()}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(report, indent=1) + "\n")
    torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)  # as measure.main: skip the gloo teardown that now and then aborts a rank


def run_fsdp_demo(out_dir: str | Path, processes: int = 2) -> list[dict]:
    """Run the demonstration in ``processes`` fresh processes (``measure.torchrun``); every rank's report."""
    from .harness import torchrun

    torchrun(["llava_nb.lab.fsdp_demo", str(out_dir)], processes)
    return [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(processes)]


if __name__ == "__main__":
    from .. import _compat as compat

    compat.silence_known_warnings()
    main(sys.argv[1])

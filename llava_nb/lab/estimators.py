"""Memory estimators side by side, on the runs of ``data/gpu/train_full.jsonl`` (one row per record, GiB per GPU).

* **The calculator** (``llava_nb.memory.estimate.estimate_memory``): the busiest rank's steady and peak memory for
  the method's dtypes, frozen weights apart from trained ones, plus the transients of the step (gradients, AdamW's
  temporary, checkpointed block inputs, logits), which grow with ``micro_batch * seq_len``; host memory for offload.
* **DeepSpeed 0.19.8**, model states only: ``deepspeed/runtime/zero/stage3.py``
  ``estimate_zero3_model_states_mem_needs`` gives ``4 * largest_layer + 18 P / N`` bytes per GPU without offload, and
  with parameters and optimizer offloaded ``4 * largest_layer`` per GPU and ``18 P * 1.5`` on the host per node
  (``zero_init=True``); ``stage_1_and_2.py`` ``estimate_zero2_model_states_mem_needs`` gives ``2 P + 18 P / N``.
  The ``*_all_cold`` functions users call only print these (they return None), so the helpers they call are used.
  P is every parameter: they assume all of them train (LLaVA's frozen ViT, a LoRA's frozen base) and know nothing of
  activations, micro-batch, sequence length or allocator transients. ``*_all_live``'s ``model_to_params`` dedups
  parameters by ``data_ptr()``, which is 0 on the meta device, so fed a meta model it counts one tensor; P and the
  largest layer come from ``model_shapes`` instead (the same counts a real model gives).
* **Accelerate 1.15.0**, ``accelerate estimate-memory`` (``accelerate/commands/estimate.py``): ``create_empty_model``
  builds ``AutoModel.from_config(config, torch_dtype=float32)`` under ``init_empty_weights`` (the base model: no
  ``lm_head``); ``gather_data`` sizes it with ``accelerate.utils.calculate_maximum_sizes`` (parameters and buffers)
  and ``estimate_training_usage(size, "float16")`` splits training into model 4, gradients 6, optimizer 8 and step 8
  bytes per parameter; ``estimate_command`` prints the largest of the four as "Training using Adam" (float16 row;
  the float32 row says 16). One number per model: no GPUs, no sharding, no activations, every parameter trained.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from pathlib import Path

from ..paths import DATA_DIR

GIB = 2**30
TRAIN_FULL = DATA_DIR / "gpu" / "train_full.jsonl"
#: the plan's sequence length (``training/plan.py``), used for records that stopped before measuring one
PLAN_SEQ_LEN = 2048
#: method's engine -> (DeepSpeed estimator, offload, what the row counts); adapters never fit DeepSpeed's estimators
DEEPSPEED = {"zero2": ("zero2", False, "ZeRO-2, no offload"), "zero3": ("zero3", False, "ZeRO-3, no offload"),
             "fsdp": ("zero3", False, "ZeRO-3 (FSDP full sharding), no offload"),
             "zero3-offload": ("zero3", True, "ZeRO-3, parameters and optimizer on the CPU")}
NOT_TRAINED_ALL = "not applicable: assumes every parameter trains"


def deepspeed_estimate(model, method: str, gpus: int = 1, nodes: int = 1) -> dict:
    """DeepSpeed's model-state estimate for ``method``: GPU GiB per GPU, host GiB per node, and what it counts."""
    from ..memory.shapes import model_shapes
    from ..methods.registry import get_method

    chosen = get_method(method)
    if chosen.adapter.name != "none" or chosen.stage != 2:
        return {"gpu_gib": math.nan, "host_gib": math.nan, "counts": NOT_TRAINED_ALL}
    if chosen.engine.name not in DEEPSPEED:
        return {"gpu_gib": math.nan, "host_gib": math.nan, "counts": "no estimator: DeepSpeed has ZeRO-2 and -3 only"}
    kind, offload, counts = DEEPSPEED[chosen.engine.name]
    shapes = model_shapes(model)
    if kind == "zero2":
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(shapes.total, gpus, nodes, cpu_offload=offload)
    else:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(shapes.total, shapes.largest_layer, gpus, nodes,
                                                            cpu_offload=offload, cpu_offload_params=offload,
                                                            zero_init=True)
    return {"gpu_gib": gpu / GIB, "host_gib": cpu / GIB, "counts": counts}


@functools.lru_cache(maxsize=None)
def accelerate_estimate(model: str, command: bool = True) -> dict:
    """What ``accelerate estimate-memory`` prints for training (float16 row), on the model built on the meta device:
    ``AutoModel`` as the command builds it, or with ``command=False`` ``build_model`` (the model train() trains)."""
    import torch
    import transformers
    from accelerate import init_empty_weights
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes, convert_bytes

    from ..models.architectures import build_model, get_config

    if command:
        with init_empty_weights():
            empty = transformers.AutoModel.from_config(copy.deepcopy(get_config(model)), dtype=torch.float32)
    else:
        empty = build_model(model, device="meta", dtype=torch.float32)
    total, _ = calculate_maximum_sizes(empty)
    usage = estimate_training_usage(total, "float16")
    return {"class": type(empty).__name__, "float32_bytes": total, "usage": usage,
            "training_gib": max(usage.values()) / GIB, "printed": convert_bytes(max(usage.values()))}


def _outcome(record: dict) -> str:
    error = record.get("error")
    if error is None:
        return "ran"
    if "CUDA out of memory" in error:
        return "out of GPU memory"
    if "does not fit" in error:
        return "refused by the plan (predicted not to fit)"
    return "killed (SIGKILL)" if "SIGKILL" in error else "failed"


def _settings(record: dict) -> tuple:
    """(micro-batch, seq_len, grad checkpointing) of a record: as run, or as planned for a run that stopped."""
    if "measured" in record:
        plan = record.get("plan") or {}
        return record["micro_batch"], record["measured"]["max_seq_len"], plan.get("grad_checkpointing", True)
    found = re.search(r"micro-batch (\d+)", record.get("error", ""))
    micro = record.get("micro_batch_override") or (int(found.group(1)) if found else None)
    return micro, PLAN_SEQ_LEN, True


def estimator_table(path: Path | str = TRAIN_FULL) -> "pd.DataFrame":  # noqa: F821
    """One row per record of ``path``: the measurement (busiest rank) beside each estimator, all in GiB."""
    import pandas as pd

    from ..memory.estimate import estimate_memory

    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        model, method, gpus = record["model"], record["method"], record["gpus"]
        micro, seq_len, checkpointing = _settings(record)
        measured = record.get("measured", {})
        row = {"model": model, "method": method, "GPUs": gpus, "micro-batch": micro, "seq_len": seq_len,
               "outcome": _outcome(record), "measured peak": max(measured.get("peak_gib", [math.nan])),
               "measured steady": max(measured.get("steady_gib", [math.nan]))}
        if micro is None:
            row.update({"calculator peak": math.nan, "calculator steady": math.nan, "calculator host": math.nan})
        else:
            est = estimate_memory(model, method, gpus=gpus, micro_batch=micro, seq_len=seq_len,
                                  grad_checkpointing=checkpointing)
            row.update({"calculator peak": est.peak_gib, "calculator steady": est.steady_gib,
                        "calculator host": est.cpu_gib})
        ds = deepspeed_estimate(model, method, gpus)
        row.update({"DeepSpeed GPU": ds["gpu_gib"], "DeepSpeed host": ds["host_gib"], "DeepSpeed counts": ds["counts"],
                    "Accelerate (Adam)": accelerate_estimate(model)["training_gib"]})
        rows.append(row)
    return pd.DataFrame(rows).astype({"micro-batch": "Int64"})

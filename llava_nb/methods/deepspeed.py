"""LLaVA's DeepSpeed settings: its ``scripts/zero2.json``, ``zero3.json`` and ``zero3_offload.json``, and the config
each DeepSpeed engine runs with, every ``"auto"`` resolved as the Hugging Face Trainer resolves it
(``reduce_bucket_size = h*h``, ``stage3_prefetch_bucket_size = 0.9*h*h``, ``stage3_param_persistence_threshold = 10*h``
for the LLM's hidden size ``h``). Pure Python.

Gradient clipping, as LLaVA's runs really had it: ``zero2.json`` and ``zero3.json`` have no ``gradient_clipping``
key, and the Trainer fills only "auto" entries (transformers 4.37.2 integrations/deepspeed.py:119-126,150), so
DeepSpeed's default applied, which in the version LLaVA pins is 0, no clipping (deepspeed 0.12.6
runtime/constants.py:211; ZeRO clips only ``if self.clip_grad > 0.``, zero/stage_1_and_2.py:1912, zero/stage3.py:2033).
Only ``zero3_offload.json:51`` says "auto", the Trainer's ``max_grad_norm``, 1.0 by default (training_args.py:739).
``deepspeed_config`` therefore writes ``gradient_clipping`` as ``max_grad_norm`` and, with none given, 0.0 (1.0 for
zero3-offload). It writes the 0.0 out rather than leave the key out: DeepSpeed 0.19.8, the version installed here,
defaults a missing key to 1.0 (runtime/constants.py:203).
"""

from __future__ import annotations

import copy
from pathlib import Path

from ..errors import UnknownMethodError
from .registry import ENGINES, get_method

#: LLaVA's DeepSpeed files (haotian-liu/LLaVA ``scripts/zero2.json``, ``scripts/zero3.json``,
#: ``scripts/zero3_offload.json``), their ``zero_optimization`` sections verbatim; the precision, batch and optimizer
#: entries are "auto" there (filled in by the HF Trainer) and are set by ``deepspeed_config`` here.
LLAVA_ZERO = {
    "zero2": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
              "reduce_bucket_size": "auto"},
    "zero3": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
              "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
              "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
              "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True},
    "zero3-offload": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                      "offload_param": {"device": "cpu", "pin_memory": True}, "overlap_comm": True,
                      "contiguous_gradients": True, "sub_group_size": 1e9, "reduce_bucket_size": "auto",
                      "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                      "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
                      "gather_16bit_weights_on_model_save": True},
}


#: The rest of LLaVA's zero2.json / zero3.json: precision and batch entries left to the HF Trainer ("auto").
LLAVA_COMMON = {
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
}
#: zero3_offload.json's extras: DeepSpeed's own AdamW and WarmupLR (their values "auto" too), clipping at the
#: Trainer's max_grad_norm ("auto"). (Its bf16 is "auto" as in the others, since LLaVA's commit 6b3079e.)
LLAVA_OFFLOAD_EXTRA = {
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                  "warmup_num_steps": "auto"}},
    "gradient_clipping": "auto",
    "steps_per_print": 1e5,
    "wall_clock_breakdown": False,
}
LLAVA_FILES = {"zero2": "zero2.json", "zero3": "zero3.json", "zero3-offload": "zero3_offload.json"}


def llava_deepspeed_file(name: str) -> dict:
    """The content of LLaVA's ``scripts/<name>.json`` (``zero2``, ``zero3``, ``zero3-offload``), "auto" entries
    included; ``llava_nb/configs/`` ships them as files (``tests/test_recipes.py`` checks they agree)."""
    if name not in LLAVA_FILES:
        raise UnknownMethodError(f"LLaVA ships DeepSpeed files for {', '.join(LLAVA_FILES)}, not {name!r}")
    config = copy.deepcopy(LLAVA_COMMON)
    if name == "zero3-offload":
        config.update(copy.deepcopy(LLAVA_OFFLOAD_EXTRA))
    config["zero_optimization"] = copy.deepcopy(LLAVA_ZERO[name])
    return config


def llava_deepspeed_path(name: str):
    """Path of the shipped copy of LLaVA's DeepSpeed file for ``name`` (``TrainingArguments(deepspeed=path)``)."""
    llava_deepspeed_file(name)  # validates the name
    return Path(__file__).parent / "configs" / LLAVA_FILES[name]


def default_clipping(method: str) -> float:
    """The gradient norm LLaVA's own DeepSpeed file for ``method``'s engine clips at (0.0: none; module docstring)."""
    return 1.0 if get_method(method).engine.name == "zero3-offload" else 0.0


def llm_hidden_size(config) -> int:
    text = getattr(config, "text_config", config)
    return int(text.hidden_size)


def deepspeed_config(method: str, hidden_size: int, micro_batch: int = 1, world_size: int = 1,
                     gradient_accumulation_steps: int = 1, bf16: bool = True, *, max_grad_norm: float | None = None,
                     **zero_overrides) -> dict:
    """The DeepSpeed config ``method`` runs with, every ``"auto"`` resolved as the HF Trainer resolves it.

    ``ddp`` is stage 0 (no sharding: what ``DeepSpeedPlugin`` would run for it); ``zero1`` is LLaVA's ``zero2.json``
    with stage 1. ``gradient_clipping`` is ``max_grad_norm``; None means LLaVA's file: 0.0, no clipping, for
    zero1/2/3 (their JSON has no such key) and 1.0 for zero3-offload ("auto", the Trainer's default max_grad_norm)
    (see the module docstring). ``zero_overrides`` replace entries of ``zero_optimization`` (e.g.
    ``stage3_param_persistence_threshold=0`` to see tiny models sharded).
    """
    engine = get_method(method).engine
    if engine.kind != "deepspeed" and engine.name != "ddp":
        raise UnknownMethodError(f"{method!r} does not run on DeepSpeed; DeepSpeed engines: "
                                 f"{', '.join(e for e in ENGINES if ENGINES[e].kind == 'deepspeed')}")
    stage, method = engine.zero_stage, engine.name
    zero = copy.deepcopy(LLAVA_ZERO["zero3-offload" if method == "zero3-offload" else "zero3" if stage == 3 else "zero2"])
    zero["stage"] = stage
    auto = {"reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 10 * hidden_size}
    zero = {k: auto[k] if v == "auto" else v for k, v in zero.items()}
    zero.update(zero_overrides)
    config = {"train_micro_batch_size_per_gpu": micro_batch,
              "gradient_accumulation_steps": gradient_accumulation_steps,
              "train_batch_size": micro_batch * world_size * gradient_accumulation_steps,
              "bf16": {"enabled": bf16}, "zero_optimization": zero,
              "gradient_clipping": float(max_grad_norm if max_grad_norm is not None else default_clipping(method)),
              "steps_per_print": 10**9, "wall_clock_breakdown": False}
    if method == "zero3-offload":
        # torch's AdamW on the CPU (no compiled DeepSpeedCPUAdam needed); DeepSpeed refuses it unless told to.
        config["zero_force_ds_cpu_optimizer"] = False
    return config



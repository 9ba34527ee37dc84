"""What a training run is given: a typed ``TrainConfig``, the recipes it starts from (by model size, stage and
adapter), and the picklable ``TrainSpec`` a worker process receives.

Batch arithmetic: ``batch_size`` samples make one optimizer step, over ``P`` processes, each running
``micro_batch`` samples per forward, ``gradient_accumulation_steps`` times::

    batch_size = P x micro_batch x gradient_accumulation_steps

Give any two of ``micro_batch`` and ``gradient_accumulation_steps`` (with ``batch_size``) and the third follows;
with neither, there is no accumulation.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import asdict, dataclass, field

from ..errors import LlavaNbError

#: The tiny models' recipe: LLaVA's shape (stage 1 projector only, stage 2 everything but the ViT), with learning
#: rates and sizes for ~1M-parameter models on a CPU. Stage 1's lr is 5x lower than LLaVA's 1e-3: at this size a
#: projector trained at 1e-3 to 2e-3 on captions drifts to large, nearly image-independent outputs, and stage 2
#: then learns markedly worse than from a lower-lr stage 1 (measured while building the book; see the notes).
#: Stage 2 comes from experiments/gpu/sweep_recipe.py (chapter 04): with the committed pretrained parts, lr 5e-4 with
#: weight decay 0.5 on the matrices, batches *not* grouped by length (which stalls "Is there a <colour> shape?"),
#: bf16 autocast (a cheaper step on CPUs with bf16 instructions; fp32 on others: ``api._tiny_precision``) and eager
#: attention: under bf16 autocast on a CPU, PyTorch's SDPA runs its flash-attention kernel, whose backward pass at
#: these tiny shapes costs more than the matrix products (``bench step-time``; chapter 04), and eager attention makes
#: a step ~1.7x faster. Real models on GPUs keep the default (SDPA). 14 epochs, not 12: on seeds 0-4 they raised the
#: mean held-out accuracy with eager attention from 0.909 to 0.931. Over ten seeds the recipe averages just over 90%
#: but misses it in some seeds: "exists" stays a close call at this size.
TINY_HYPERPARAMS = {
    1: dict(lr=2e-4, epochs=1, batch_size=32, max_length=512, warmup_ratio=0.05),
    2: dict(lr=5e-4, epochs=14, batch_size=32, max_length=512, warmup_ratio=0.05, weight_decay=0.5,
            mixed_precision="bf16", attn_implementation="eager"),
}
#: LoRA on the tiny models: LLaVA's rank-to-width ratio would leave r = 4 at width 128, so r = 16 with LLaVA's
#: alpha = 2 r; and, as LLaVA's LoRA recipe (2e-4) against its full fine-tuning (2e-5), a higher learning rate.
#: LoRA and QLoRA keep the shorter schedule they were built with (6 epochs in fp32, no weight decay), which keeps
#: their chapters' first runs short; the LoRA and QLoRA chapters show the epochs when they compare the two. In
#: fp32 SDPA is the faster attention on a CPU (``bench step-time``), so they keep the default.
TINY_LORA = dict(lr=2e-3, epochs=6, weight_decay=0.0, mixed_precision="no", attn_implementation=None, lora_r=16,
                 lora_alpha=32)
#: LLaVA-1.5's recipe for real checkpoints, from haotian-liu/LLaVA@c121f04 scripts/v1_5/pretrain.sh (stage 1) and
#: finetune.sh (stage 2), flag by flag: each setting's line of LLaVA is in data/llava_recipe.json (see
#: ``llava_recipe_table``; the book tables it). The global batch is the per-GPU batch on LLaVA's 8 GPUs.
#: finetune.sh:16's --group_by_modality_length is ``group_by_modality_length`` (``data.sampling``: one modality per
#: step, lengths balanced across processes).
FULL_HYPERPARAMS = {
    1: dict(lr=1e-3, epochs=1, batch_size=256, max_length=2048, warmup_ratio=0.03, mixed_precision="bf16",
            tf32=True, gradient_checkpointing=True),
    2: dict(lr=2e-5, epochs=1, batch_size=128, max_length=2048, warmup_ratio=0.03,
            group_by_modality_length=True, mixed_precision="bf16", tf32=True, gradient_checkpointing=True),
}
#: LLaVA-1.5's engines for real checkpoints: ZeRO-2 for stage 1 (pretrain.sh:4 --deepspeed ./scripts/zero2.json),
#: ZeRO-3 for stage 2 (finetune.sh:4 --deepspeed ./scripts/zero3.json; finetune_lora.sh:5 runs LoRA on it too).
FULL_METHODS = {1: "zero2", 2: "zero3"}
#: LLaVA-1.5's LoRA recipe for real checkpoints (stage 2 with an adapter), from haotian-liu/LLaVA@c121f04
#: scripts/v1_5/finetune_lora.sh: adapters at 2e-4, the projector (trained in full) at its own 2e-5; every other
#: flag is finetune.sh's (finetune_lora.sh adds line 4 and changes only the learning rate, line 28, and the output
#: folder). Dropout 0.05 and bias "none" are LLaVA's defaults (llava/train/train.py:108,110).
FULL_LORA = dict(lr=2e-4, mm_projector_lr=2e-5, lora_r=128, lora_alpha=256)


def llava_recipe_table() -> list[dict]:
    """The rows of ``data/llava_recipe.json``: every recipe setting above (and the few set elsewhere: the lr
    schedule, gradient clipping, LoRA's targets and bias) by stage (1, 2, "lora"), with the package's value, LLaVA's
    file, line and verbatim text, and the package's file and line. ``python -m llava_nb.lab.recipe_table`` writes
    it; tests/test_recipe_table.py checks it against these recipes."""
    import json

    from ..paths import DATA_DIR

    return json.loads((DATA_DIR / "llava_recipe.json").read_text())


#: tiny models: torch DDP over 2 CPU processes (or every GPU)
TINY_METHOD = "ddp"


class ConfigError(LlavaNbError):
    """A training setting of the wrong type or out of range."""


@dataclass
class TrainConfig:
    """Every setting of a training run, typed. ``TrainConfig.recipe`` fills in the recipe for a model and stage."""

    lr: float = 2e-5
    mm_projector_lr: float | None = None  # the projector's own lr (LLaVA's --mm_projector_lr; None: lr)
    mm_vision_tower_lr: float | None = None  # a trained ViT's own lr (LLaVA-NeXT's; needs unfreeze_vision; None: lr)
    epochs: int = 1
    batch_size: int = 128  # samples per optimizer step, over every process
    micro_batch: int | None = None  # samples per process per forward (None: from the other two)
    gradient_accumulation_steps: int | None = None  # forwards per optimizer step (None: from the other two, or 1)
    max_length: int = 2048
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    mixed_precision: str = "no"  # "no" or "bf16" (autocast; DeepSpeed's bf16; FSDP2's bf16 compute)
    tf32: bool = False  # TensorFloat-32 matrix products for what stays fp32, on GPUs that have it
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None  # None: the model's own ("sdpa"); "eager"
    group_by_length: bool = False  # the Hugging Face Trainer's: batches of similar length (data.dataset)
    group_by_modality_length: bool = False  # LLaVA's: one modality per step (data.sampling)
    max_grad_norm: float | None = None  # None: LLaVA's (no clipping; zero3-offload 1.0), 0: none
    lora_r: int = 128  # LoRA: LLaVA's finetune_lora.sh
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    unfreeze_vision: bool = False
    find_unused_parameters: bool = False
    template: str | None = None  # None: the model's (plain for stage 1)
    save_every: int = 0
    save_total_limit: int | None = 2  # checkpoints kept (the latest ones; None: all). At 7B one is about 100 GB
    log_every: int = 5
    max_steps: int | None = None
    stop_after: int | None = None
    resume_from: str | None = None
    resume_lr: float | None = None  # on resume: the new lr (every group scaled by resume_lr / lr; the schedule goes on)
    num_processes: int | None = None  # None: every GPU, or 2 CPU processes
    gpu_memory_gib: float | None = None  # per GPU, for the plan (None: read from the GPU; no plan on a CPU)
    eval_max: int = 300
    n_images: int = 3000  # the synthetic set (tiny models)
    n_test: int = 300
    force: bool = False
    images_outside_folder: bool = False  # accept data records whose image path leads out of image_folder

    def __post_init__(self):
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        if self.mixed_precision not in ("no", "bf16"):
            raise ConfigError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        for name in ("lr", "mm_projector_lr", "epochs", "batch_size", "micro_batch", "gradient_accumulation_steps",
                     "max_length", "lora_r", "lora_alpha", "max_steps", "stop_after", "num_processes", "eval_max",
                     "n_images", "save_total_limit", "resume_lr", "mm_vision_tower_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        for name in ("warmup_ratio", "lora_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm!r}")
        if self.mm_vision_tower_lr is not None and not self.unfreeze_vision:
            raise ConfigError(f"mm_vision_tower_lr={self.mm_vision_tower_lr!r} is the lr of a trained vision tower, and "
                              "the vision tower is frozen; add unfreeze_vision=true (--set unfreeze_vision=true)")
        if self.group_by_length and self.group_by_modality_length:
            raise ConfigError("group_by_length and group_by_modality_length are two different samplers; set only one")

    @classmethod
    def recipe(cls, tiny: bool, stage: int, adapter: bool = False, **overrides) -> TrainConfig:
        """The recipe for a tiny model or a real checkpoint at ``stage`` (LoRA's own for stage 2 with an adapter),
        then ``overrides``; an unknown name is an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            close = [m for u in unknown for m in difflib.get_close_matches(u, known, n=1)]
            raise ConfigError(f"unknown training setting(s) {unknown}"
                              + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")
                              + f"; known: {sorted(known)}")
        lora = (TINY_LORA if tiny else FULL_LORA) if stage == 2 and adapter else {}
        return cls(**{**(TINY_HYPERPARAMS if tiny else FULL_HYPERPARAMS)[stage], **lora, **overrides})

    def batch_split(self, processes: int) -> tuple[int, int]:
        """``(micro_batch, gradient_accumulation_steps)`` for ``processes`` processes (see the module docstring)."""
        per_step = self.batch_size
        micro, accum = self.micro_batch, self.gradient_accumulation_steps
        if micro is None:
            accum = accum or 1
            micro, rest = divmod(per_step, processes * accum)
        elif accum is None:
            accum, rest = divmod(per_step, processes * micro)
        else:
            rest = per_step - processes * micro * accum
        if micro < 1 or accum < 1 or rest:
            raise ConfigError(
                f"batch_size={per_step} must equal processes x micro_batch x gradient_accumulation_steps = "
                f"{processes} x {self.micro_batch or '?'} x {self.gradient_accumulation_steps or '?'}; change "
                "batch_size, micro_batch or gradient_accumulation_steps")
        return micro, accum


def _coerce(name: str, value, hint):
    """``value`` as the field's type (an int where a float is expected is fine), else a ``ConfigError``."""
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise ConfigError(f"{name} cannot be None")
    kinds = [k for k in (typing.get_args(hint) or (hint,)) if k is not type(None)]
    for kind in kinds:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (bool, str) and isinstance(value, kind):
            return value
    names = " or ".join(k.__name__ for k in kinds)
    raise ConfigError(f"{name} must be {names}, got {value!r}")


@dataclass
class TrainSpec:
    """Everything a worker process needs (picklable, so it crosses ``notebook_launcher``)."""

    model: str
    stage: int
    method: str
    data: str | None
    image_folder: str | None
    eval_data: str | None
    output_dir: str
    seed: int
    config: TrainConfig = field(default_factory=lambda: TrainConfig())
    #: what identifies the run (recorded in result.json; a finished run with the same fingerprint is reused)
    fingerprint: dict | None = None

    def to_json(self) -> dict:
        return {**asdict(self), "config": asdict(self.config)}

    @classmethod
    def from_json(cls, data: dict) -> TrainSpec:
        return cls(**{**data, "config": TrainConfig(**data["config"])})

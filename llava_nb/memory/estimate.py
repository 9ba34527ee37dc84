"""``estimate_memory``: what one GPU (the busiest rank) holds when training LLaVA with a method.

Pure Python: the model's parameter counts come from its config numbers (``shapes.py``), the per-method terms from
``formulas.py``; this module adds them up, phase by phase, and answers whether a setting fits.

Three ways of counting (``accounting``):

* ``"paper"``: the ZeRO paper's model states (Rajbhandari et al. 2019, sec. 3), mixed-precision Adam, K = 12, every
  one of the Psi parameters trained: DDP ``(2 + 2 + K) Psi``, ZeRO-1 ``2 Psi + 2 Psi + K Psi / N``, ZeRO-2
  ``2 Psi + (2 + K) Psi / N``, ZeRO-3 ``(2 + 2 + K) Psi / N``;
* ``"deepspeed"``: the terms of DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs`` and
  ``estimate_zero3_model_states_mem_needs``), on all of the model's parameters, as their ``*_all_live`` versions
  count them: ZeRO-2 ``2 P + 18 P / N``, ZeRO-3 ``4 * largest_layer + 18 P / N``, model states only;
* ``"measured"`` (default): what ``train()`` allocates for each method of the registry (``llava_nb.methods``: the
  set-up ``methods.setup`` runs, the dtypes ``Method.states`` declares), validated against runs on GPUs
  (``data/measurements``). Per rank, with T the parameters that train (stage 2: all but the ViT; LoRA: the adapters
  and peft's copy of the projector), P all that the rank's model holds and ``part(x)`` this rank's share of x
  (DeepSpeed's padding and FSDP's dim-0 chunks included):

  ==========  ==============================================  ====================================================
  engine      steady (persistent)                             transient, at the step
  ==========  ==============================================  ====================================================
  ddp         frozen part in its dtype + 4T fp32 weights      4T fp32 grads + 4T AdamW's temporary
              + 8T AdamW (bf16 compute by autocast)
  zero1/2     2P + 4 part(T) + 8 part(T) + 2 x 2h^2 buckets   4 part(T) fp32 grads + 4 part(T) AdamW temporary
  zero3       2 part(P) + 12 part(T) + 2 part(T) grad buffer  8 x min(sub_group_size, part(T)) (one sub-group)
              + 2 x 2h^2 buckets
  fsdp        4 part(P) fp32 shards + 8 part(T) AdamW         4 part(T) fp32 grads + 4 part(T) AdamW temporary
  ==========  ==============================================  ====================================================

  An adapter changes T and what is frozen: ``lora`` (on ``ddp``) keeps a bf16 base, ``qlora`` an NF4 base (0.5
  bytes a parameter plus double-quantised constants) with everything else cast to fp32; on DeepSpeed and FSDP the
  engine's own dtypes apply to the base and the adapters alike (``zero3+lora``, ``fsdp+lora``).

  DDP replicas (``ddp``, ``lora``, ``qlora`` on several GPUs) keep every trained gradient in their buckets between
  steps. QLoRA's residual stream is fp32 (``prepare_model_for_kbit_training`` casts the embeddings), so its
  checkpointed block inputs are 4 bytes a value.

  AdamW's temporary is ``torch._foreach_sqrt(exp_avg_sq)``: torch's AdamW (foreach) allocates one tensor the size of
  the parameters it updates. During backward the peak is the larger of the loss phase (the checkpointed block
  inputs, ``L * tokens * h`` values, plus the logits: bf16 logits, their fp32 log-softmax and two fp32 gradients,
  14 bytes per token per vocabulary entry) and the end of backward (the gradients the method keeps there plus one
  block's recomputed activations). Without checkpointing every block keeps its activations, term by term from the
  architecture (``activations.py``: for a Llama block with bf16 compute, sdpa and as many KV heads as heads,
  ``24 h + 8 i + 4 a + 8`` bytes per token for full fine-tuning; the option ``attention="eager"`` adds the ``6 a s``
  of the softmax; under ZeRO-3 DeepSpeed's own Linear keeps the inputs of frozen Linears too).

``peak`` is ``steady`` plus the transient parts of the costlier phase, so the breakdown always adds up. A setting
*fits* a card when ``peak`` stays below the card's usable memory minus ``headroom`` (default 5%): PyTorch's caching
allocator fragments, and a run whose ``max_memory_allocated`` would be 76.2 GiB did run out of memory on a
79.18 GiB H100 (ZeRO-1/2 of llava-1.5-7b on 2 GPUs, ``data/measurements``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import LlavaNbError, UnknownMethodError
from ..methods.registry import METHODS, get_method  # noqa: F401 (METHODS re-exported)
from ..models.image_tokens import count_image_tokens
from ..models.layout import as_numbers
from .formulas import (  # noqa: F401 (re-exported: chapters and tests import them from here)
    DOUBLE_QUANT_BYTES,
    NF4_BITS,
    PAPER_K,
    activation_bytes_per_token,
    deepspeed_terms,
    measured_terms,
    paper_terms,
)
from .shapes import Shapes, model_shapes, trainable_count  # noqa: F401 (re-exported)

GIB = 2**30
ACCOUNTINGS = ("measured", "paper", "deepspeed")
#: An 80 GB H100 as ``torch.cuda.get_device_properties().total_memory`` reports it, in GiB.
H100_80GB_GIB = 79.18
DEFAULT_HEADROOM = 0.05
PERSISTENT = ("weights", "master_weights", "optimizer_states", "gradient_buffer", "comm_buffers")


class MemoryConfigError(LlavaNbError):
    """A configuration that cannot run (gpus < 1, seq_len shorter than the image tokens, ...)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """One GPU (the busiest rank). ``breakdown`` maps components to bytes: the ``PERSISTENT`` ones sum to
    ``steady``; the ``transient`` ones (those of the costlier phase) add up to ``peak - steady``."""

    model: str
    method: str
    gpus: int
    micro_batch: int
    seq_len: int
    grad_checkpointing: bool
    accounting: str
    steady_gib: float
    peak_gib: float
    breakdown: dict
    transient: tuple
    #: host memory of the whole machine (all ``gpus`` ranks together), for offload; 0 without
    cpu_gib: float = 0.0
    image_tokens: int = 0
    peak_phase: str = ""
    options: dict = field(default_factory=dict)
    #: every phase's transient components (bytes): "loss", "end of backward", "optimizer step"
    phases: dict = field(default_factory=dict)
    #: the parameters that train, and the dtype of each training state (``Method.states``), as counted
    trainable: int = 0
    states: dict = field(default_factory=dict)

    def fits(self, gpu_memory_gib: float = H100_80GB_GIB, headroom: float = DEFAULT_HEADROOM) -> bool:
        """Whether the peak fits ``gpu_memory_gib`` of usable memory, keeping ``headroom`` (a fraction) free."""
        if not gpu_memory_gib > 0 or not 0 <= headroom < 1:
            raise MemoryConfigError(f"need gpu_memory_gib > 0 and headroom in [0, 1) (the fraction kept free), got "
                                    f"{gpu_memory_gib!r} and {headroom!r}")
        return self.peak_gib <= gpu_memory_gib * (1 - headroom)

    def table(self) -> list[tuple[str, float, str]]:
        """(component, GiB, "steady"/"transient") rows, largest first within each kind."""
        rows = [(k, v / GIB, "transient" if k in self.transient else "steady") for k, v in self.breakdown.items()]
        return sorted(rows, key=lambda r: (r[2] != "steady", -r[1]))


def _image_tokens(model, image_size) -> int:
    """Image tokens of one image: the ViT's square input for v1/v1.5, ``image_size=(h, w)`` through anyres for v1.6."""
    config = as_numbers(model)
    vision = config.vision_config
    if image_size is None:
        image_size = (vision.image_size, vision.image_size)
    elif getattr(config, "model_type", "") != "llava_next":
        raise MemoryConfigError("image_size only changes the image tokens of v1.6 (anyres) models; leave it out")
    return count_image_tokens(config, *image_size)


def _vision(model, micro_batch: int, image_size) -> dict:
    """What a trained ViT's activations need (``formulas.vit_activation_bytes``): its layer, the layers the features
    come from (``vision_feature_layer`` -2: all but the last), and the patch tokens (CLS included) of the
    micro-batch's views: one per image for v1/v1.5, the base image and its anyres tiles for v1.6."""
    from .activations import VitBlock

    config = as_numbers(model)
    v = config.vision_config
    view = (v.image_size // v.patch_size) ** 2 + 1
    views = 1
    if getattr(config, "model_type", "") == "llava_next":
        from ..models.image_tokens import anyres_layout

        views += anyres_layout(config, *(image_size or (v.image_size, v.image_size))).num_tiles
    feature = config.vision_feature_layer
    deepest = max(f if f >= 0 else v.num_hidden_layers + 1 + f for f in (feature if isinstance(feature, (list, tuple))
                                                                         else (feature,)))
    return {"block": VitBlock(v.hidden_size, v.intermediate_size, v.num_attention_heads), "layers": deepest,
            "tokens": micro_batch * views * view, "view_tokens": view}


#: the ``options`` estimate_memory understands (its docstring)
OPTIONS = {"reduce_bucket_size", "sub_group_size", "stage3_param_persistence_threshold", "lora_r", "nodes", "rank",
           "fp32_grads", "attention", "unfreeze_vision"}


def estimate_memory(model, method: str, gpus: int = 1, micro_batch: int = 1, seq_len: int = 2048,
                    grad_checkpointing: bool = True, accounting: str = "measured", image_size=None,
                    **options) -> MemoryEstimate:
    """Predict one GPU's memory (the busiest rank) for training ``model`` with ``method`` (a name of the registry:
    "zero3", "lora", "zero3+lora", "stage1", ...; bf16 mixed precision, as LLaVA's recipes).

    ``model`` is a name, alias or transformers config (or, with ``accounting="paper"``, a bare parameter count).
    ``seq_len`` counts the image tokens (576 for LLaVA-1.5; for v1.6 they follow ``image_size=(h, w)``).
    ``options`` change the recipe: ``reduce_bucket_size``, ``sub_group_size``,
    ``stage3_param_persistence_threshold`` (DeepSpeed), ``lora_r``, ``attention`` ("sdpa", the default, or "eager":
    the attention kernel), ``unfreeze_vision`` (the ViT trains too, as in LLaVA-1.6's recipe), ``nodes`` (for
    ``accounting="deepspeed"``),
    ``rank`` (FSDP's shards differ by rank when a dimension does not divide; default 0, the busiest).
    """
    if accounting not in ACCOUNTINGS:
        raise LlavaNbError(f"unknown accounting {accounting!r}; choose one of {', '.join(ACCOUNTINGS)}")
    chosen = get_method(method)
    if not isinstance(gpus, int) or gpus < 1:
        raise MemoryConfigError(f"gpus must be a whole number >= 1, got {gpus!r}")
    if not isinstance(micro_batch, int) or micro_batch < 1:
        raise MemoryConfigError(f"micro_batch must be a whole number >= 1, got {micro_batch!r}")
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise MemoryConfigError(f"unknown option(s) {unknown}; known: {sorted(OPTIONS)}")
    if options.get("attention", "sdpa") not in ("sdpa", "eager"):
        raise MemoryConfigError(f"attention={options['attention']!r} is not a kernel the calculator counts; use "
                                f"'sdpa' (flash/cuDNN) or 'eager'")
    if isinstance(model, float) and not isinstance(model, bool):  # a count written as 7.5e9
        if not (math.isfinite(model) and model >= 1):
            raise MemoryConfigError(f"a parameter count must be a positive number, got {model!r}")
        model = round(model)
    if isinstance(model, int) and model < 1:
        raise MemoryConfigError(f"a parameter count must be positive, got {model:,}")
    base = dict(method=chosen.name, gpus=gpus, micro_batch=micro_batch, seq_len=seq_len,
                grad_checkpointing=grad_checkpointing, accounting=accounting, options=dict(options))
    if accounting != "measured" and ({"attention", "unfreeze_vision"} & set(options)):
        raise MemoryConfigError(f"attention and unfreeze_vision change what accounting='measured' counts; "
                                f"accounting={accounting!r} has no activations or trained ViT to change")
    if accounting != "measured" and (chosen.adapter.name != "none" or chosen.stage != 2):
        raise UnknownMethodError(f"accounting={accounting!r} counts full fine-tuning with an engine (ddp, zero1, "
                                 f"zero2, zero3, zero3-offload, fsdp), not {chosen.name!r}; use accounting='measured'")
    if isinstance(model, int):
        if accounting != "paper":
            raise MemoryConfigError("a bare parameter count only works with accounting='paper'; pass a model name "
                                    "or config for the other accountings")
        parts = paper_terms(model, chosen.engine.name, gpus, options.get("fp32_grads", False))
        return _finish(f"{model:,} parameters", parts, {}, 0, 0, base)
    shapes = model_shapes(model, options.get("lora_r", 128))
    n_img = _image_tokens(model, image_size)
    if seq_len <= n_img:
        raise MemoryConfigError(f"seq_len={seq_len} is shorter than the {n_img} image tokens it must hold; "
                                f"use seq_len > {n_img}")
    if accounting == "paper":
        return _finish(shapes.name, paper_terms(shapes.total, chosen.engine.name, gpus, options.get("fp32_grads", False)), {}, 0,
                       n_img, base)
    if accounting == "deepspeed":
        gpu, cpu = deepspeed_terms(shapes.total, shapes.largest_layer, chosen.engine.name, gpus, options.get("nodes", 1))
        return _finish(shapes.name, gpu, {}, cpu, n_img, base)
    vision = _vision(model, micro_batch, image_size) if options.get("unfreeze_vision") else None
    persistent, phases, cpu = measured_terms(shapes, chosen, gpus, micro_batch * seq_len, grad_checkpointing, options,
                                             seq_len, vision)
    base.update(trainable=trainable_count(shapes, chosen, bool(vision)), states=chosen.states("bf16").as_dict())
    return _finish(shapes.name, persistent, phases, cpu, n_img, base)


def _finish(name: str, persistent: dict, phases: dict, cpu: int, n_img: int, base: dict) -> MemoryEstimate:
    steady = sum(persistent.values())
    phase, transient = "", {}
    if phases:
        phase = max(phases, key=lambda k: sum(phases[k].values()))
        transient = {f"{k} ({phase})": v for k, v in phases[phase].items() if v}
    breakdown = {k: int(v) for k, v in {**persistent, **transient}.items()}
    return MemoryEstimate(model=name, steady_gib=steady / GIB, peak_gib=(steady + sum(transient.values())) / GIB,
                          breakdown=breakdown, transient=tuple(transient), cpu_gib=cpu / GIB, image_tokens=n_img,
                          peak_phase=phase, phases={k: {c: int(b) for c, b in v.items()} for k, v in phases.items()},
                          **base)


def korthikanti_activation_bytes(layers: int, hidden: int, heads: int, seq_len: int, micro_batch: int = 1,
                                 recompute: str = "none", embedding_dropout: bool = True) -> int:
    """Activation memory of a GPT-style transformer in 16-bit (Korthikanti et al. 2022, eq. 2 and sec. 5):
    ``s b h (34 + 5 a s / h)`` bytes per layer without recomputation, ``2 s b h`` per layer with full
    recomputation (only each layer's input is kept); plus, outside the layers, the input embedding's dropout mask,
    ``s b h`` bytes (sec. 4.2). With that term this reproduces the Ultra-Scale Playbook's activation figures."""
    s, b, h, a = seq_len, micro_batch, hidden, heads
    extra = s * b * h if embedding_dropout else 0
    if recompute == "none":
        return int(layers * s * b * h * (34 + 5 * a * s / h)) + extra
    if recompute == "full":
        return layers * 2 * s * b * h + extra
    raise LlavaNbError(f"recompute must be 'none' or 'full', got {recompute!r}")


def max_micro_batch(model, method: str, gpu_memory_gib: float = H100_80GB_GIB, headroom: float = DEFAULT_HEADROOM,
                    limit: int = 1024, **kwargs) -> int:
    """The largest micro-batch whose peak fits (0 if even 1 does not)."""
    def fits(b):
        return estimate_memory(model, method, micro_batch=b, **kwargs).fits(gpu_memory_gib, headroom)

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo

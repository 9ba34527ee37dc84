"""``estimate_memory``: what one GPU (the busiest rank) holds when training LLaVA's stage 2 with a method.

Three ways of counting (``accounting``):

* ``"paper"``: the ZeRO paper's model states (Rajbhandari et al. 2019, sec. 3), mixed-precision Adam, K = 12, every
  one of the Psi parameters trained: DDP ``(2 + 2 + K) Psi``, ZeRO-1 ``2 Psi + 2 Psi + K Psi / N``, ZeRO-2
  ``2 Psi + (2 + K) Psi / N``, ZeRO-3 ``(2 + 2 + K) Psi / N``;
* ``"deepspeed"``: the terms of DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs`` and
  ``estimate_zero3_model_states_mem_needs``), on all of the model's parameters, as their ``*_all_live`` versions
  count them: ZeRO-2 ``2 P + 18 P / N``, ZeRO-3 ``4 * largest_layer + 18 P / N``, model states only;
* ``"measured"`` (default): what a real run allocates, recipe by recipe (``llava_nb.methods.recipes``), validated against
  runs on GPUs (``data/measurements``). Per rank, with T the trainable parameters (the ViT is frozen), P all of
  them and ``part(x)`` this rank's share of x (DeepSpeed's padding and FSDP's dim-0 chunks included):

  ========  ==============================================  ======================================================
  method    steady (persistent)                             transient, at the step
  ========  ==============================================  ======================================================
  ddp       2P bf16 + 4T fp32 master + 8T AdamW             2T bf16 + 4T fp32 grads + 4T AdamW's temporary
  zero1/2   2P + 4 part(T) + 8 part(T) + 2 x 2h^2 buckets   4 part(T) fp32 grads + 4 part(T) AdamW temporary
  zero3     2 part(P) + 12 part(T) + 2 part(T) grad buffer  8 x min(sub_group_size, part(T)) (one sub-group)
            + 2 x 2h^2 buckets
  fsdp      4 part(P) fp32 shards + 8 part(T) AdamW         4 part(T) fp32 grads + 4 part(T) AdamW temporary
  lora      2P bf16 base + adapters fp32 + projector bf16   their gradients + AdamW temporary (same bytes)
            + their AdamW states
  qlora     NF4 base (0.5 B/param + double-quantised        as lora
            constants) + everything else cast to fp32
  ========  ==============================================  ======================================================

  LoRA and QLoRA on several GPUs are DDP replicas, whose gradient buckets hold every trainable gradient between
  steps. QLoRA's activations are counted twice LoRA's: ``prepare_model_for_kbit_training`` casts the embeddings to
  fp32, so the residual stream (and the checkpointed block inputs) are fp32.

  AdamW's temporary is ``torch._foreach_sqrt(exp_avg_sq)``: torch's AdamW (foreach) allocates one tensor the size of
  the parameters it updates. During backward the peak is the larger of the loss phase (the checkpointed block
  inputs, ``L * tokens * h`` values, plus the logits: bf16 logits, their fp32 log-softmax and two fp32 gradients,
  14 bytes per token per vocabulary entry) and the end of backward (the gradients the method keeps there plus one
  block's recomputed activations). Without checkpointing every block keeps its activations: for a Llama block with
  bf16 compute and flash attention, ``26 h + 8 i`` bytes per token for full fine-tuning and ``46 h + 11 i + 28 r``
  for LoRA (frozen Linears save no inputs; peft's fp32 adapters save a dropout mask and an fp32 copy of each input).

``peak`` is ``steady`` plus the transient parts of the costlier phase, so the breakdown always adds up. A setting
*fits* a card when ``peak`` stays below the card's usable memory minus ``headroom`` (default 5%): PyTorch's caching
allocator fragments, and a run whose ``max_memory_allocated`` would be 76.2 GiB did run out of memory on a
79.18 GiB H100 (ZeRO-1/2 of llava-1.5-7b on 2 GPUs, ``data/measurements``).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

from ..errors import LlavaNbError, UnknownMethodError

GIB = 2**30
ACCOUNTINGS = ("measured", "paper", "deepspeed")
METHODS = ("ddp", "zero1", "zero2", "zero3", "zero3-offload", "fsdp", "lora", "qlora")
ZERO_STAGE = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "zero3-offload": 3}
#: An 80 GB H100 as ``torch.cuda.get_device_properties().total_memory`` reports it, in GiB.
H100_80GB_GIB = 79.18
DEFAULT_HEADROOM = 0.05
PAPER_K = 12
NF4_BITS = 4
#: bytes per parameter of a 4-bit weight's constants: blocksize-64 absmax quantised to 8 bits, plus fp32 second-level
#: constants per 256 blocks (QLoRA, sec. 2: 8/64 + 32/(64*256) bits)
DOUBLE_QUANT_BYTES = (8 / 64 + 32 / (64 * 256)) / 8
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

    def fits(self, gpu_memory_gib: float = H100_80GB_GIB, headroom: float = DEFAULT_HEADROOM) -> bool:
        """Whether the peak fits ``gpu_memory_gib`` of usable memory, keeping ``headroom`` (a fraction) free."""
        return self.peak_gib <= gpu_memory_gib * (1 - headroom)

    def table(self) -> list[tuple[str, float, str]]:
        """(component, GiB, "steady"/"transient") rows, largest first within each kind."""
        rows = [(k, v / GIB, "transient" if k in self.transient else "steady") for k, v in self.breakdown.items()]
        return sorted(rows, key=lambda r: (r[2] != "steady", -r[1]))


@dataclass(frozen=True)
class Shapes:
    """What the arithmetic needs from a model, read once from its meta-device modules."""

    name: str
    total: int              # P: every parameter
    vision: int             # the ViT (frozen)
    trainable: int          # T: stage 2 (projector + LLM + lm_head)
    projector: int          # projector + image_newline
    embed: int              # input embeddings
    lm_head: int
    llm_linear: int         # parameters in the LLM blocks' Linear layers (what QLoRA quantises)
    adapter: int            # LLaVA's LoRA adapters (r=128) on those Linears
    largest_layer: int      # DeepSpeed's: the most parameters one module owns directly
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    lora_r: int
    sizes: tuple            # every parameter's shape, for padding and sharding (trainable flag, shape)
    persistent_small: int   # parameters of tensors below ZeRO-3's persistence threshold (10 h)


@functools.lru_cache(maxsize=32)
def _shapes_cached(key: str, lora_r: int) -> Shapes:
    from transformers import AutoConfig

    from ..models.architectures import build_model
    from ..models.params import count_parameters, model_parts
    from ..methods.recipes import freeze_vision

    data = json.loads(key)
    config = AutoConfig.for_model(**data)
    model = build_model(config, device="meta")
    freeze_vision(model)
    parts = model_parts(model)
    counts = count_parameters(model, "lora", lora_r=lora_r)
    b = counts["breakdown"]
    text = config.text_config
    lm = parts["language_model"]
    linear = sum(m.weight.numel() for n, m in lm.named_modules() if type(m).__name__ == "Linear")
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    sizes = tuple((p.requires_grad, tuple(p.shape)) for p in model.parameters())
    threshold = 10 * text.hidden_size
    return Shapes(
        name=getattr(config, "llava_nb_name", config.model_type), total=counts["total"], vision=b["vision_tower"],
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        projector=b["projector"] + b["image_newline"], embed=lm.embed_tokens.weight.numel(), lm_head=b["lm_head"],
        llm_linear=linear, adapter=counts["adapter"], largest_layer=largest, layers=text.num_hidden_layers,
        hidden=text.hidden_size, intermediate=text.intermediate_size, heads=text.num_attention_heads,
        vocab=text.vocab_size, lora_r=lora_r, sizes=sizes,
        persistent_small=sum(math.prod(s) for _, s in sizes if math.prod(s) < threshold))


def _config_key(model) -> str:
    from ..models.architectures import as_config

    data = as_config(model).to_dict()
    data.pop("transformers_version", None)
    return json.dumps(data, sort_keys=True, default=str)


@functools.lru_cache(maxsize=64)
def _name_key(name: str) -> str:
    return _config_key(name)


def model_shapes(model, lora_r: int = 128) -> Shapes:
    """``Shapes`` of a name, alias, config or module (cached per configuration, and per name)."""
    key = _name_key(model) if isinstance(model, str) else _config_key(model)
    return _shapes_cached(key, lora_r)


@functools.lru_cache(maxsize=256)
def _image_tokens_by_name(name: str, image_size) -> int:
    return _image_tokens_uncached(name, image_size)


def _image_tokens(model, image_size) -> int:
    if isinstance(model, str):
        return _image_tokens_by_name(model, None if image_size is None else tuple(image_size))
    return _image_tokens_uncached(model, image_size)


def _image_tokens_uncached(model, image_size) -> int:
    from ..models.architectures import as_config
    from ..models.image_tokens import count_image_tokens

    config = as_config(model)
    vision = config.vision_config
    if image_size is None:
        image_size = (vision.image_size, vision.image_size)
    elif getattr(config, "model_type", "") != "llava_next":
        raise MemoryConfigError("image_size only changes the image tokens of v1.6 (anyres) models; leave it out")
    return count_image_tokens(config, *image_size)


def _zero12_partition(numel: int, gpus: int) -> int:
    """DeepSpeed ZeRO-1/2: the flat group is padded to a multiple of 2 x gpus, then split evenly."""
    align = 2 * gpus
    return math.ceil(numel / align) * align // gpus


def _zero3_partition(sizes, gpus: int, trainable_only: bool) -> int:
    """DeepSpeed ZeRO-3 partitions each parameter separately: ceil(numel / gpus) elements per rank."""
    return sum(math.ceil(math.prod(s) / gpus) for t, s in sizes if t or not trainable_only)


def _fsdp_shard(sizes, gpus: int, trainable_only: bool, rank: int = 0) -> int:
    """FSDP2 chunks dim 0 of each parameter like ``torch.chunk``: ceil(dim0 / gpus) rows per rank, the last ranks
    get what is left (possibly nothing). Rank 0 is the busiest."""
    total = 0
    for t, s in sizes:
        if trainable_only and not t:
            continue
        dim0 = s[0] if s else 1
        step = math.ceil(dim0 / gpus)
        rows = max(0, min(step, dim0 - rank * step))
        total += rows * math.prod(s[1:])
    return total


def _paper(psi: int, method: str, gpus: int, fp32_grads: bool = False) -> dict:
    """The ZeRO paper's model states; ``fp32_grads`` adds the 4 Psi of an fp32 gradient-accumulation buffer (the
    Ultra-Scale Playbook's 140 GB for 7B), unsharded for ddp/zero1 and sharded otherwise."""
    parts = _paper_states(psi, method, gpus)
    if fp32_grads:
        parts["fp32_gradients"] = 4 * psi / (gpus if method in ("zero2", "zero3", "fsdp") else 1)
    return parts


def _paper_states(psi: int, method: str, gpus: int) -> dict:
    k = PAPER_K
    if method == "ddp":
        return {"weights": 2 * psi, "gradients": 2 * psi, "optimizer_states": k * psi}
    if method == "zero1":
        return {"weights": 2 * psi, "gradients": 2 * psi, "optimizer_states": k * psi / gpus}
    if method == "zero2":
        return {"weights": 2 * psi, "gradients": 2 * psi / gpus, "optimizer_states": k * psi / gpus}
    if method in ("zero3", "fsdp"):
        return {"weights": 2 * psi / gpus, "gradients": 2 * psi / gpus, "optimizer_states": k * psi / gpus}
    raise UnknownMethodError(f"the ZeRO paper's formula covers ddp, zero1, zero2, zero3 (and fsdp, which shards like "
                             f"ZeRO-3), not {method!r}; use accounting='measured'")


def deepspeed_terms(total_params: int, largest_layer_params: int, method: str, gpus_per_node: int = 1,
                    nodes: int = 1, buffer_factor: float = 1.5) -> tuple[dict, int]:
    """The terms of DeepSpeed's model-state estimators: (GPU bytes by term, CPU bytes per node).

    ``zero2`` is ``estimate_zero2_model_states_mem_needs(cpu_offload=False)``, ``zero3`` is
    ``estimate_zero3_model_states_mem_needs(cpu_offload=False)`` and ``zero3-offload`` the same with optimizer and
    parameter offload (``zero_init=True``). DeepSpeed has no estimator for stage 0 or 1.
    """
    p, total_gpus = total_params, gpus_per_node * nodes
    if method == "zero2":
        gpu = {"params_16bit": 2 * p, "grads_16bit+grads_32bit+params_32bit+adam (18 P / N)": int(18 * p / total_gpus)}
        return gpu, int(p * 4 * gpus_per_node * buffer_factor)
    if method == "zero3":
        gpu = {"largest_layer (4 x params)": 4 * largest_layer_params,
               "params+grads+master+adam (18 P / N)": int(18 * p / total_gpus)}
        return gpu, int(largest_layer_params * 4 * gpus_per_node * buffer_factor)
    if method == "zero3-offload":
        return {"largest_layer (4 x params)": 4 * largest_layer_params}, int(p * 18 * (1 / nodes) * buffer_factor)
    raise UnknownMethodError(f"DeepSpeed ships estimators for ZeRO-2 and ZeRO-3 only; accounting='deepspeed' cannot "
                             f"describe {method!r}. Use 'measured', or method zero2/zero3/zero3-offload")


def activation_bytes_per_token(shapes: Shapes, method: str, grad_checkpointing: bool) -> dict:
    """Bytes per token kept for backward: ``blocks`` (all blocks), ``one_block`` (one block recomputed),
    ``logits`` (the loss phase)."""
    h, i, r, L = shapes.hidden, shapes.intermediate, shapes.lora_r, shapes.layers
    if method in ("lora", "qlora"):
        per_block = 46 * h + 11 * i + 28 * r
    else:
        per_block = 26 * h + 8 * i
    width = 4 if method == "qlora" else 2  # prepare_model_for_kbit_training makes the residual stream fp32
    if method == "qlora":
        per_block *= 2
    if grad_checkpointing:
        return {"blocks": L * width * h, "one_block": per_block, "logits": 16 * shapes.vocab if method == "qlora"
                else 14 * shapes.vocab}
    return {"blocks": L * per_block, "one_block": 0, "logits": 16 * shapes.vocab if method == "qlora"
            else 14 * shapes.vocab}


def _measured(shapes: Shapes, method: str, gpus: int, tokens: int, grad_checkpointing: bool, options: dict) -> tuple:
    """(persistent, phases, cpu bytes) of ``method``'s recipe; phases map a name to its transient components."""
    P, T = shapes.total, shapes.trainable
    h = shapes.hidden
    act = activation_bytes_per_token(shapes, method, grad_checkpointing)
    blocks, one_block, logits = (act["blocks"] * tokens, act["one_block"] * tokens, act["logits"] * tokens)
    loss_phase = {"activations": blocks, "logits_and_loss": logits}
    cpu = 0
    if method in ZERO_STAGE:
        stage = ZERO_STAGE[method]
        bucket = options.get("reduce_bucket_size", h * h)
        if stage == 0:
            persistent = {"weights": 2 * P, "master_weights": 4 * T, "optimizer_states": 8 * T}
            end = {"gradients": 2 * T, "activations": one_block}
            step = {"gradients": 2 * T + 4 * T, "optimizer_temporaries": 4 * T}
        elif stage in (1, 2):
            part = _zero12_partition(T, gpus)
            persistent = {"weights": 2 * P, "master_weights": 4 * part, "optimizer_states": 8 * part,
                          "comm_buffers": 2 * 2 * bucket}
            # ZeRO-1 keeps every bf16 gradient until the step; ZeRO-2 reduces them into its bf16 partition.
            end = {"gradients": 2 * T if stage == 1 else 2 * part, "activations": one_block}
            step = {"gradients": 4 * part, "optimizer_temporaries": 4 * part}
        else:
            part = _zero3_partition(shapes.sizes, gpus, trainable_only=True)
            weights = 2 * _zero3_partition(shapes.sizes, gpus, trainable_only=False)
            threshold = options.get("stage3_param_persistence_threshold", 10 * h)
            small = shapes.persistent_small if threshold == 10 * h else sum(
                math.prod(s) for _, s in shapes.sizes if math.prod(s) < threshold)
            sub = min(int(options.get("sub_group_size", 1e9)), part)
            layer = 2 * shapes.largest_layer  # bf16 gathered: the largest module (embeddings / lm_head)
            if method == "zero3-offload":
                persistent = {"weights": 2 * small, "comm_buffers": 2 * 2 * bucket}
                end = {"gradients": 2 * bucket, "gathered_params": 2 * layer, "activations": one_block}
                step = {"gathered_params": 0}
                cpu = gpus * (2 * (weights // 2) + 16 * part) + 4 * sub
            else:
                persistent = {"weights": weights + 2 * small, "master_weights": 4 * part,
                              "optimizer_states": 8 * part, "gradient_buffer": 2 * part,
                              "comm_buffers": 2 * 2 * bucket}
                end = {"gathered_params": 2 * layer, "activations": one_block}
                step = {"gradients": 4 * sub, "optimizer_temporaries": 4 * sub}
    elif method == "fsdp":
        rank = options.get("rank", 0)
        params = 4 * _fsdp_shard(shapes.sizes, gpus, trainable_only=False, rank=rank)
        part = _fsdp_shard(shapes.sizes, gpus, trainable_only=True, rank=rank)
        persistent = {"weights": params, "optimizer_states": 8 * part}
        end = {"gradients": 4 * part, "activations": one_block}
        step = {"gradients": 4 * part, "optimizer_temporaries": 4 * part}
    else:  # lora, qlora
        adapters = 4 * shapes.adapter
        if method == "lora":
            base = 2 * (P - shapes.projector)
            projector = 2 * shapes.projector
        else:
            quantised = shapes.llm_linear
            rest = P - quantised - shapes.projector
            base = int(quantised * (NF4_BITS / 8 + DOUBLE_QUANT_BYTES)) + 4 * rest  # fp32 after prepare_...
            projector = 4 * shapes.projector
        trainable = adapters + projector
        persistent = {"weights": base + trainable, "optimizer_states": 2 * trainable}
        if gpus > 1:
            persistent["gradient_buffer"] = trainable  # DDP's buckets hold every gradient between steps
            end = {"activations": one_block}
            step = {"optimizer_temporaries": trainable}
        else:
            end = {"gradients": trainable, "activations": one_block}
            step = {"gradients": trainable, "optimizer_temporaries": trainable}
    phases = {"loss": loss_phase, "end of backward": end, "optimizer step": step}
    return persistent, phases, cpu


def estimate_memory(model, method: str, gpus: int = 1, micro_batch: int = 1, seq_len: int = 2048,
                    grad_checkpointing: bool = True, accounting: str = "measured", image_size=None,
                    **options) -> MemoryEstimate:
    """Predict one GPU's memory (the busiest rank) for training ``model``'s stage 2 with ``method``.

    ``model`` is a name, alias or transformers config (or, with ``accounting="paper"``, a bare parameter count).
    ``seq_len`` counts the image tokens (576 for LLaVA-1.5; for v1.6 they follow ``image_size=(h, w)``).
    ``options`` change the recipe: ``reduce_bucket_size``, ``sub_group_size``,
    ``stage3_param_persistence_threshold`` (DeepSpeed), ``lora_r``, ``nodes`` (for ``accounting="deepspeed"``),
    ``rank`` (FSDP's shards differ by rank when a dimension does not divide; default 0, the busiest).
    """
    if accounting not in ACCOUNTINGS:
        raise LlavaNbError(f"unknown accounting {accounting!r}; choose one of {', '.join(ACCOUNTINGS)}")
    if method not in METHODS:
        raise UnknownMethodError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(gpus, int) or gpus < 1:
        raise MemoryConfigError(f"gpus must be a whole number >= 1, got {gpus!r}")
    if not isinstance(micro_batch, int) or micro_batch < 1:
        raise MemoryConfigError(f"micro_batch must be a whole number >= 1, got {micro_batch!r}")
    base = dict(method=method, gpus=gpus, micro_batch=micro_batch, seq_len=seq_len,
                grad_checkpointing=grad_checkpointing, accounting=accounting, options=dict(options))
    if isinstance(model, int):
        if accounting != "paper":
            raise MemoryConfigError("a bare parameter count only works with accounting='paper'; pass a model name "
                                    "or config for the other accountings")
        parts = _paper(model, method, gpus, options.get("fp32_grads", False))
        return _finish(f"{model:,} parameters", parts, {}, 0, 0, base)
    shapes = model_shapes(model, options.get("lora_r", 128))
    n_img = _image_tokens(model, image_size)
    if seq_len <= n_img:
        raise MemoryConfigError(f"seq_len={seq_len} is shorter than the {n_img} image tokens it must hold; "
                                f"use seq_len > {n_img}")
    if accounting == "paper":
        return _finish(shapes.name, _paper(shapes.total, method, gpus, options.get("fp32_grads", False)), {}, 0,
                       n_img, base)
    if accounting == "deepspeed":
        gpu, cpu = deepspeed_terms(shapes.total, shapes.largest_layer, method, gpus, options.get("nodes", 1))
        return _finish(shapes.name, gpu, {}, cpu, n_img, base)
    persistent, phases, cpu = _measured(shapes, method, gpus, micro_batch * seq_len, grad_checkpointing, options)
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

"""The training methods, defined once: an *engine* (how processes share the work) with an *adapter* (what trains).

Pure Python: this module imports no torch, so that the memory calculator and the command line can read a method.
The torch side of each method lives beside it: ``setup.setup_model`` (freeze, cast, adapters, quantization,
checkpointing) and ``wrap.accelerator_kwargs`` (the Accelerate plugin with its DeepSpeed config or FSDP2 policy).
``train()``, the per-rank measurements, ``estimate_memory``, ``count_parameters`` and the chapters all take a method
from ``get_method``.

=============  =====================================================  ==========================================
engine         what each process holds                                 states of the parameters that train
=============  =====================================================  ==========================================
ddp            a full replica; gradients all-reduced                   fp32 weights (they are the master), fp32
                                                                       gradients, fp32 AdamW; bf16 by autocast
zero1          a full bf16 replica; 1/N of the optimizer states        bf16 weights, fp32 master, fp32 AdamW
zero2          ... and 1/N of the gradients                            as zero1
zero3          ... and 1/N of the weights (gathered layer by layer)    as zero1
zero3-offload  zero3, with master weights and AdamW in host memory      as zero1, master and AdamW on the CPU
fsdp           1/N of every parameter (FSDP2, per block)               fp32 shards (the master), bf16 compute
=============  =====================================================  ==========================================

Adapters: ``none`` trains the projector and the LLM (LLaVA's stage 2) or the projector alone (stage 1); ``lora``
trains low-rank adapters on every LLM Linear plus the projector, the rest frozen in the compute dtype (bf16 with
``mixed_precision="bf16"``); ``qlora`` does the same on a 4-bit NF4 base. Names: ``zero3``; ``zero3+lora`` (or
``get_method("zero3", adapter="lora")``); ``lora`` and ``qlora`` are shorthands for ``ddp+lora`` and ``ddp+qlora``
(one GPU, or DDP replicas); ``fsdp+qlora`` keeps the 4-bit base whole on every GPU and shards the rest (the ViT,
embeddings, ``lm_head``, adapters, projector and their states); ``stage1`` is LLaVA's projector-only stage on ``ddp``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from ..errors import UnknownMethodError

#: bytes per element of each dtype name the registry uses ("nf4": 4 bits; its block constants are counted apart)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "nf4": 0.5}


@dataclass(frozen=True)
class Engine:
    name: str
    kind: str  # "ddp", "deepspeed" or "fsdp"
    #: what is sharded over the N processes: 0 nothing, 1 optimizer states, 2 + gradients, 3 + weights
    zero_stage: int
    description: str
    offload: bool = False  # master weights and optimizer states in host memory (DeepSpeed's offload)


@dataclass(frozen=True)
class Adapter:
    name: str  # "none", "lora" or "qlora"
    description: str
    quantized: bool = False  # the frozen LLM Linears in 4-bit NF4


@dataclass(frozen=True)
class States:
    """The dtype of each training state of the parameters that train (``master`` None: the optimizer steps the
    weights themselves); ``frozen`` is the dtype the frozen parameters are kept in (None: nothing frozen)."""

    weights: str
    master: str | None
    gradients: str
    optimizer: str
    frozen: str | None

    def as_dict(self) -> dict:
        return {"weights": self.weights, "master": self.master, "gradients": self.gradients,
                "optimizer": self.optimizer, "frozen": self.frozen}


ENGINES = {e.name: e for e in (
    Engine("ddp", "ddp", 0, "DistributedDataParallel: a full replica per process, gradients all-reduced"),
    Engine("zero1", "deepspeed", 1, "DeepSpeed ZeRO-1 (LLaVA's zero2.json at stage 1): optimizer states sharded"),
    Engine("zero2", "deepspeed", 2, "DeepSpeed ZeRO-2 (LLaVA's zero2.json): optimizer states and gradients sharded"),
    Engine("zero3", "deepspeed", 3, "DeepSpeed ZeRO-3 (LLaVA's zero3.json): weights, gradients and optimizer "
           "states sharded"),
    Engine("zero3-offload", "deepspeed", 3, "DeepSpeed ZeRO-3 with master weights and optimizer states offloaded "
           "to the CPU (LLaVA's zero3_offload.json)", offload=True),
    Engine("fsdp", "fsdp", 3, "PyTorch FSDP2 through Accelerate: every block's parameters, gradients and optimizer "
           "states sharded"),
)}
ADAPTERS = {a.name: a for a in (
    Adapter("none", "no adapter: the projector and the LLM train (stage 2), or the projector alone (stage 1)"),
    Adapter("lora", "LoRA adapters on every LLM Linear (peft), the projector trained in full"),
    Adapter("qlora", "QLoRA: LoRA on a 4-bit NF4 base (bitsandbytes), the projector trained in full",
            quantized=True),
)}
#: compositions train() runs; others are refused with the reason. ``fsdp+qlora`` runs with the 4-bit base replicated:
#: Accelerate keeps bitsandbytes' packed uint8 weights out of ``fully_shard`` (accelerate/utils/fsdp_utils.py,
#: ``fsdp2_prepare_model``, 1.14+) and shards the rest. Sharding the base too needs its packed weights stored as bf16
#: (``bnb_4bit_quant_storage``), and FSDP2 then rewrites the packed bytes that read as bf16 NaNs
#: (bitsandbytes-foundation/bitsandbytes#1945)
_NO_4BIT_ZERO = ("DeepSpeed would have to partition a bitsandbytes 4-bit base, which needs its packed weights stored "
                 "as bf16 (bnb_4bit_quant_storage), a set-up this project has not made or tested")
UNSUPPORTED = {(engine, "qlora"): _NO_4BIT_ZERO for engine in ("zero1", "zero2", "zero3", "zero3-offload")}
SHORTHANDS = {"lora": ("ddp", "lora"), "qlora": ("ddp", "qlora"), "stage1": ("ddp", "none")}


@dataclass(frozen=True)
class Method:
    """One training method: an engine, an adapter, and what trains (``stage`` 1: the projector; 2: LLaVA's stage 2
    set, or the adapters plus the projector)."""

    engine: Engine
    adapter: Adapter
    stage: int = 2

    @property
    def name(self) -> str:
        if self.stage == 1:
            return "stage1" if self.engine.name == "ddp" else f"{self.engine.name} (stage 1)"
        if self.adapter.name == "none":
            return self.engine.name
        if self.engine.name == "ddp":
            return self.adapter.name
        return f"{self.engine.name}+{self.adapter.name}"

    @property
    def key(self) -> str:
        """A name ``get_method`` reads back to this method, given the stage (stage 1: the engine's name)."""
        return self.engine.name if self.stage == 1 else self.name

    @property
    def description(self) -> str:
        if self.adapter.name == "none":
            return self.engine.description
        return f"{self.adapter.description}; {self.engine.description}"

    @property
    def trains(self) -> str:
        """``"projector"`` (stage 1), ``"llm"`` (projector + LLM + lm_head) or ``"adapters"`` (+ the projector)."""
        return "projector" if self.stage == 1 else "llm" if self.adapter.name == "none" else "adapters"

    def for_stage(self, stage: int) -> Method:
        """This method for LLaVA's ``stage`` (1: the projector alone; adapters have nothing to train there)."""
        if stage not in (1, 2):
            raise UnknownMethodError(f"stage must be 1 or 2, got {stage!r}")
        if stage == 1 and self.adapter.name != "none":
            raise UnknownMethodError(
                f"method {self.name!r} adds adapters to the LLM, which stage 1 does not train (it trains the "
                f"projector alone): use it for stage 2, or method={self.engine.name!r} for stage 1")
        return replace(self, stage=stage)

    def states(self, mixed_precision: str = "bf16") -> States:
        """The dtypes train() keeps each state in (``mixed_precision``: "bf16" or "no")."""
        compute = "bfloat16" if mixed_precision == "bf16" else "float32"
        if self.engine.kind == "deepspeed":  # DeepSpeed casts the module to bf16, masters and AdamW in fp32
            weights, master = ("bfloat16", "float32") if mixed_precision == "bf16" else ("float32", None)
            frozen = weights
        elif self.engine.kind == "fsdp":  # fp32 shards, all-gathered in bf16 for compute
            weights, master, frozen = "float32", None, "float32"
        else:  # torch DDP: trainable fp32, autocast computes in bf16; a frozen base in the compute dtype
            weights, master = "float32", None
            frozen = compute if self.adapter.name != "none" else "float32"
        if self.adapter.quantized:
            frozen = "nf4"
        return States(weights, master, "float32", "float32", frozen)


def get_method(name, adapter: str | None = None) -> Method:
    """The ``Method`` called ``name`` ("zero3", "zero3+lora", "lora", "stage1", ...) or a ``Method`` as it is;
    ``adapter`` ("none", "lora", "qlora") composes one with an engine's name."""
    if isinstance(name, Method):
        return name if adapter in (None, name.adapter.name) else get_method(name.engine.name, adapter)
    if not isinstance(name, str):
        raise UnknownMethodError(f"method must be a name such as 'zero3' or 'zero3+lora', got {name!r}")
    key = name.strip().lower()
    stage = 2
    if key in SHORTHANDS:
        engine, implied = SHORTHANDS[key]
        stage = 1 if key == "stage1" else 2
        if adapter not in (None, "none", implied) or (implied != "none" and adapter == "none"):
            raise UnknownMethodError(f"method {name!r} already names its adapter ({implied}); "
                                     f"use method='ddp', adapter={adapter!r}")
        adapter = implied
    elif "+" in key:
        engine, _, named = key.partition("+")
        if adapter not in (None, named):
            raise UnknownMethodError(f"method {name!r} names adapter {named!r}, but adapter={adapter!r} was given")
        adapter = named
    else:
        engine = key
    adapter = adapter or "none"
    if engine not in ENGINES:
        close = difflib.get_close_matches(str(name), [*ENGINES, *SHORTHANDS], n=1)
        raise UnknownMethodError(f"unknown training method {name!r}"
                                 + (f" (did you mean {close[0]!r}?)" if close else "")
                                 + f"; engines: {', '.join(ENGINES)}; shorthands: "
                                 f"{', '.join(SHORTHANDS)}; compose as ENGINE+ADAPTER, e.g. zero3+lora")
    if adapter not in ADAPTERS:
        raise UnknownMethodError(f"unknown adapter {adapter!r}; choose one of {', '.join(ADAPTERS)}")
    if (engine, adapter) in UNSUPPORTED:
        raise UnknownMethodError(f"{engine}+{adapter} is not supported: {UNSUPPORTED[engine, adapter]}; "
                                 f"use fsdp+{adapter} (the 4-bit base on every GPU, the rest sharded) or {adapter}")
    return Method(ENGINES[engine], ADAPTERS[adapter], stage)


#: every engine for full fine-tuning, and LoRA and QLoRA on one GPU (or DDP replicas): the methods compared side by side
BASE_METHODS = ("ddp", "zero1", "zero2", "zero3", "zero3-offload", "fsdp", "lora", "qlora")
#: every method a reader can name: one per supported composition (stage 2), and stage 1
METHODS = (*BASE_METHODS, *(f"{e}+lora" for e in ENGINES if e != "ddp"), "fsdp+qlora", "stage1")

"""Activations from the architecture: what autograd saves for backward in one LLM block, term by term (pure Python).

Nothing here is fitted. Each term is a tensor some operation of transformers' Llama/Mistral block saves, read from
the code and counted from the config's numbers: h the width, i the MLP width, a heads and g KV heads of size e,
r LoRA's rank, s the sequence length. Bytes per token of one block, with bf16 compute:

=================  ========================================================  ==========================================
term               full fine-tuning (bf16 weights: ZeRO, FSDP)               what saves it
=================  ========================================================  ==========================================
norms              2 x (4h + 4) + 2 x 2h                                     RMSNorm: the fp32 input (pow, mul), 1/rms,
                                                                             and the normalised input if its weight
                                                                             trains
linear inputs      2h (q,k,v) + 2h (gate,up) + 2i (down)                     a Linear saves its input when its weight
                                                                             trains
attention (sdpa)   2ae (q) + 2ge (k) + 2ge (v) + 2ae (output) + 4a           flash/cuDNN: q, k, v, output, logsumexp
attention (eager)  2ae (q) + 4ae (k, v repeated to a heads) + 6as            q k^T and the fp32 softmax (4as) and its
                   + 2ae (o's input, when o trains)                          bf16 copy (2as) for p v
mlp                3 x 2i                                                    SiLU's input, SiLU(gate) and up
=================  ========================================================  ==========================================

A frozen Linear saves nothing (its weight needs no gradient, and its input's gradient needs only the weight), so
LoRA drops the linear inputs and the normalised inputs, and adds per adapted Linear (in -> out) ``(2 + m) in + 2r``:
the dropped-out input in bf16 (what A's matmul saves), the dropout mask (m bytes an element: a bool on GPUs) and
A's output. The ``compute`` of a method changes dtypes: torch DDP's autocast keeps an fp32 residual stream for
full fine-tuning (4h per norm input, and a bf16 cast of it per consuming Linear) and caches one bf16 copy of every
trained fp32 weight (2 bytes a parameter, per block, not per token); QLoRA's stream is fp32
(``prepare_model_for_kbit_training`` casts the embeddings) and bitsandbytes returns a 4-bit Linear's output in its
input's dtype, so the MLP's three saved tensors are fp32 (3 x 4i).

Except under DeepSpeed ZeRO-3: ``deepspeed.initialize`` replaces ``torch.nn.functional.linear`` for the whole
process with ``LinearFunctionForZeroStage3``, which saves input, weight and bias whether or not they need a gradient
(``deepspeed/runtime/zero/linear.py:80-105``; ``partition_parameters.py:412-419``: "This will persist unless manually
reset"), so ``zero3+lora``'s frozen Linears keep their inputs as full fine-tuning's do.

With gradient checkpointing a block keeps only its input (``stream`` h bytes a token) until backward recomputes it.

**The ViT**, frozen as in LLaVA's recipes, keeps nothing: no input of it needs a gradient. Trained
(``unfreeze_vision``, as LLaVA-1.6's recipe does), each CLIP encoder layer the features come from keeps, per patch
token (d the width, f the MLP width, n heads, w the stream's bytes: 2, or 4 for DDP's fp32 ViT under autocast):
LayerNorm inputs and their mean and 1/std ``2 (w d + 8)``, the inputs of q, k, v (one bf16 copy, or one per
projection under autocast), out_proj, fc1 and fc2 ``2d (1 or 3) + 2d + 2d + 2f``, attention ``6d + 4n`` (sdpa) or
``6d + 6 n t`` (eager, t the patch tokens of a view), and quick-GELU's input and sigmoid ``4f``.

``tests/test_activations.py`` checks every term against autograd itself (the saved tensors of a real block, walked
on a CPU); ``data/gpu/activations_gpu.jsonl`` holds the same walk, and the allocator's growth, for the 7B blocks on
an H200.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the Linears of an LLM block LLaVA's LoRA adapts (``methods.lora.LLM_TARGETS``), by input width
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Block:
    """The numbers of one LLM block: width h, MLP width i, heads a, KV heads g, head size e."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int

    def linears(self) -> dict:
        """(in, out) of each Linear, as ``LORA_TARGETS`` names them."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}


@dataclass(frozen=True)
class Compute:
    """How a method computes, as far as saved tensors go (``compute_of``)."""

    stream: int          # bytes of a residual-stream element: 2 (bf16) or 4 (fp32)
    mlp: int             # bytes of the MLP's gate/up outputs: 2, or 4 when a 4-bit Linear returns fp32
    autocast: bool       # torch DDP: bf16 autocast over fp32 trained weights
    base_trains: bool    # no adapter: the block's Linears and norms train
    lora: bool
    mask: int = 1        # bytes of a dropout-mask element: a bool on GPUs; on a CPU the dropped input's dtype
    device: str = "cuda"
    frozen_linear_inputs: bool = False  # DeepSpeed ZeRO-3's Linear saves its input even when its weight is frozen


def compute_of(method, device: str = "cuda", deepspeed_linear: bool | None = None) -> Compute:
    """``Compute`` of a ``methods.registry.Method`` as ``train()`` sets it up (``Method.states``): DeepSpeed and FSDP
    compute with bf16 weights; torch DDP (``ddp``, ``lora``, ``qlora``) under bf16 autocast. ``deepspeed_linear``
    (default: the engine is ZeRO-3) says whether DeepSpeed's Linear replaces torch's."""
    if deepspeed_linear is None:
        deepspeed_linear = method.engine.kind == "deepspeed" and method.engine.zero_stage == 3
    autocast = method.engine.kind == "ddp"
    lora = method.adapter.name != "none"
    widened = fp32_stream(method)
    stream = 4 if widened or (autocast and not lora) else 2
    mask = 1 if device == "cuda" else (4 if autocast else 2)  # CPU dropout keeps its noise in the input's dtype
    return Compute(stream=stream, mlp=4 if widened else 2, autocast=autocast, base_trains=not lora, lora=lora,
                   mask=mask, device=device, frozen_linear_inputs=deepspeed_linear)


def fp32_stream(method) -> bool:
    """QLoRA's hidden states are fp32: ``prepare_model_for_kbit_training`` casts the norms to fp32, and Llama's
    RMSNorm returns its weight's dtype (the QLoRA chapter). Not under FSDP2, which computes with bf16 copies of
    every sharded parameter, the norms included (``llava_nb.lab.quant.hidden_state_dtypes`` shows both)."""
    return method.adapter.quantized and method.engine.kind != "fsdp"


def block_terms(block: Block, compute: Compute, attention: str = "sdpa", seq_len: int = 0,
                lora_r: int = 128) -> dict:
    """Bytes per token one block saves for backward, by term (this module's table). ``seq_len`` matters for eager
    attention only."""
    h, i, a, e = block.hidden, block.intermediate, block.heads, block.head_dim
    q, kv = a * e, block.kv_heads * e
    c = compute
    terms = {"norms": 2 * (4 * h + 4) + (2 * c.stream * h if c.base_trains else 0)}
    inputs_saved = c.base_trains or c.frozen_linear_inputs
    if inputs_saved:
        # autocast casts an fp32 stream to bf16 once per consuming Linear (q, k, v; gate, up); bf16 is shared
        per_consumer = c.autocast and c.stream == 4
        terms["linear inputs"] = 2 * h * (5 if per_consumer else 2) + 2 * i
    if attention == "sdpa":
        terms["attention"] = 2 * q + 4 * kv + 2 * q + 4 * a
    elif attention == "eager":
        terms["attention"] = 2 * q + 4 * q + 6 * a * seq_len + (2 * q if inputs_saved else 0)
    else:
        raise ValueError(f"attention must be 'sdpa' or 'eager', got {attention!r}")
    terms["mlp"] = 3 * c.mlp * i
    if c.lora:
        inputs = sum(n_in for n_in, _ in block.linears().values())
        terms["lora"] = (2 + c.mask) * inputs + len(LORA_TARGETS) * 2 * lora_r
    return terms


def block_constant(block: Block, compute: Compute, lora_r: int = 128, attention: str = "sdpa") -> int:
    """Bytes one block keeps whatever the tokens: autocast's bf16 copies of the block's trained fp32 weights, and
    the scalars autograd saves (8 bytes each: LoRA's alpha / r per adapter, eager's 1 / sqrt(e); on a GPU, sdpa's
    random seed and offset)."""
    scalars = 8 * (len(LORA_TARGETS) if compute.lora else 0) + 8 * (attention == "eager")
    scalars += 16 * (attention == "sdpa" and compute.device == "cuda")
    if not compute.autocast:
        return scalars
    linears = block.linears().values()
    if compute.lora:
        return scalars + 2 * sum(lora_r * (n_in + n_out) for n_in, n_out in linears)
    return scalars + 2 * sum(n_in * n_out for n_in, n_out in linears)


def checkpointed_bytes(block: Block, compute: Compute) -> int:
    """Bytes per token a checkpointed block keeps until backward: its input."""
    return compute.stream * block.hidden


@dataclass(frozen=True)
class VitBlock:
    """The numbers of one CLIP ViT encoder layer: width d, MLP width f, heads n."""

    hidden: int
    intermediate: int
    heads: int


def vit_stream(compute: Compute) -> int:
    """Bytes of a trained ViT's stream element: torch DDP keeps a trained ViT in fp32 (autocast computes in bf16)."""
    return 4 if compute.autocast else 2


def vit_block_terms(block: VitBlock, compute: Compute, attention: str = "sdpa", view_tokens: int = 0) -> dict:
    """Bytes per patch token one trained CLIP encoder layer saves (this module's docstring); ``view_tokens`` (the
    patch tokens of one image view, CLS included) matters for eager attention only."""
    d, f, n = block.hidden, block.intermediate, block.heads
    w = vit_stream(compute)
    stats = 8 if compute.device == "cuda" or w == 4 else 4  # LayerNorm's mean and 1/std: fp32, bf16 on a CPU
    terms = {"layer norms": 2 * (w * d + stats),
             "linear inputs": 2 * d * (3 if compute.autocast else 1) + 2 * d + 2 * d + 2 * f}
    if attention == "sdpa":
        terms["attention"] = 6 * d + 4 * n
    elif attention == "eager":
        terms["attention"] = 6 * d + 6 * n * view_tokens
    else:
        raise ValueError(f"attention must be 'sdpa' or 'eager', got {attention!r}")
    terms["mlp"] = 4 * f
    return terms


def vit_block_constant(block: VitBlock, compute: Compute, attention: str = "sdpa") -> int:
    """Bytes one trained ViT layer keeps whatever the tokens: quick-GELU's 1.702 (and eager's scale) as saved
    scalars, on a GPU sdpa's seed and offset, and under autocast the bf16 copies of its Linear weights."""
    d, f = block.hidden, block.intermediate
    scalars = 8 + 8 * (attention == "eager") + 16 * (attention == "sdpa" and compute.device == "cuda")
    return scalars + (2 * (4 * d * d + 2 * d * f) if compute.autocast else 0)

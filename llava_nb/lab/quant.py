"""NF4 from scratch: QLoRA's 4-bit NormalFloat, blockwise absmax scaling and double quantization (Dettmers et al.
2023, section 3).

NF4's 16 levels are quantiles of N(0, 1), so that a normally distributed weight block uses each level about equally
often. The type is asymmetric to hold an exact zero: 8 levels from the positive half, 7 from the negative, and 0,
then scaled into [-1, 1] (bitsandbytes' ``create_normal_map(offset=0.9677083)``)::

    positive  Phi^-1(linspace(offset, 0.5, 9)[:-1])      8 values
    negative -Phi^-1(linspace(offset, 0.5, 8)[:-1])      7 values
    levels = sort(positive + [0] + negative) / max

A weight tensor is cut into blocks of 64; each block is divided by its absolute maximum (its "absmax", one fp32
constant per block) and every value is replaced by the index of the nearest level (4 bits). Dequantizing is
``levels[index] * absmax``. The constants cost 32 / 64 = 0.5 bits per parameter; double quantization stores them
in 8 bits instead, in blocks of 256 with one fp32 constant each (after subtracting their mean), which costs
8 / 64 + 32 / (64 * 256) = 0.127 bits per parameter.
"""

from __future__ import annotations

import torch

NF4_OFFSET = 0.9677083  # bitsandbytes' choice: the quantile range's end, so that the extreme levels are +-1


def nf4_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels in [-1, 1], ascending (float32)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    positive = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values
    negative = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (levels / levels.max()).float()


def quantize_blockwise(x: torch.Tensor, levels: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (n,) uint8, absmax (n / blocksize,) float32) of ``x`` flattened; ``x.numel()`` must be a multiple of
    ``blocksize``. Each value goes to the nearest level of ``levels`` after dividing by its block's absmax. Runs
    where ``x`` is (a GPU weight stays on its GPU)."""
    flat = x.detach().float().reshape(-1, blocksize)  # (blocks, blocksize)
    levels = levels.to(flat.device)
    absmax = flat.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)  # (blocks,)
    scaled = flat / absmax[:, None]  # in [-1, 1]
    indices = (scaled[..., None] - levels).abs().argmin(dim=-1)  # (blocks, blocksize): nearest level
    return indices.to(torch.uint8).reshape(-1), absmax


def dequantize_blockwise(indices: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor, blocksize: int = 64,
                         shape=None) -> torch.Tensor:
    values = levels.to(indices.device)[indices.long()].reshape(-1, blocksize) * absmax[:, None]
    return values.reshape(shape) if shape is not None else values.reshape(-1)


def int8_levels() -> torch.Tensor:
    """256 evenly spaced levels in [-1, 1] for the second quantization (symmetric absmax int8)."""
    return torch.linspace(-1, 1, 256)


def int4_levels() -> torch.Tensor:
    """Plain symmetric int4 for comparison: 15 evenly spaced levels -7/7 ... 7/7 (and one code unused)."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def double_quantize(absmax: torch.Tensor, blocksize: int = 256) -> dict:
    """The absmax constants in 8 bits: subtract their mean, then blockwise absmax int8 in blocks of ``blocksize``
    (the last block padded). Returns the parts and the constants recovered from them."""
    mean = absmax.mean()
    centred = absmax - mean
    pad = (-centred.numel()) % blocksize
    padded = torch.cat([centred, centred.new_zeros(pad)])
    codes, scales = quantize_blockwise(padded, int8_levels(), blocksize)
    recovered = dequantize_blockwise(codes, scales, int8_levels(), blocksize)[: absmax.numel()] + mean
    return {"codes": codes[: absmax.numel()], "scales": scales, "mean": mean, "absmax": recovered}


def bits_per_parameter(blocksize: int = 64, double: bool = True, blocksize2: int = 256) -> float:
    """Storage of the scaling constants per parameter, in bits: 32 / blocksize, or with double quantization
    8 / blocksize + 32 / (blocksize * blocksize2)."""
    return 8 / blocksize + 32 / (blocksize * blocksize2) if double else 32 / blocksize


def nf4_roundtrip(x: torch.Tensor, blocksize: int = 64, double: bool = True, levels: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` quantized to NF4 (or to ``levels``) and back, with double-quantized constants when ``double``."""
    levels = nf4_levels() if levels is None else levels
    indices, absmax = quantize_blockwise(x, levels, blocksize)
    if double:
        absmax = double_quantize(absmax)["absmax"]
    return dequantize_blockwise(indices, absmax, levels, blocksize, x.shape)


def linear4bit_timing(in_features: int = 4096, out_features: int = 11008, tokens: int = 4096, device: str = "cuda",
                      repeats: int = 20, seed: int = 0) -> dict:
    """Milliseconds per call of one frozen Linear (LLaMA-7B's MLP shape by default) in bf16 and as a bitsandbytes
    NF4 ``Linear4bit`` (double quantization, bf16 compute), forward alone and forward + backward to the input (what
    LoRA's frozen base needs), plus ``dequantize_4bit`` of the weight alone.

    ``Linear4bit`` dequantizes its whole weight to bf16 before each matrix product, in forward and again in
    backward, so its extra time per call is about one dequantization per pass. Timed after ``repeats // 4`` warm-up
    calls (CUDA-synchronised wall clock)."""
    import time

    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    device = torch.device(device)
    torch.manual_seed(seed)
    dense = torch.nn.Linear(in_features, out_features, bias=False, dtype=torch.bfloat16)
    q4 = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                           compress_statistics=True)
    q4.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                  compress_statistics=True)
    dense, q4 = dense.to(device).requires_grad_(False), q4.to(device)  # moving a Params4bit quantizes it
    x = torch.randn(tokens, in_features, dtype=torch.bfloat16, device=device, requires_grad=True)  # (tokens, in)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def ms(fn) -> float:
        for _ in range(max(1, repeats // 4)):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return (time.perf_counter() - t0) / repeats * 1e3

    out = {"in_features": in_features, "out_features": out_features, "tokens": tokens, "device": device.type}
    for name, layer in (("bf16", dense), ("nf4", q4)):
        out[f"{name}_forward_ms"] = ms(lambda: layer(x))
        out[f"{name}_forward_backward_ms"] = ms(lambda: layer(x).sum().backward())
    out["dequantize_ms"] = ms(lambda: dequantize_4bit(q4.weight.data, q4.weight.quant_state))
    return out


def hidden_state_dtypes(model, seq_len: int = 60) -> dict:
    """The dtype of what enters the first decoder layer's attention and MLP, the last decoder layer, and ``lm_head``
    during one training-mode forward of a synthetic batch under bf16 autocast (forward pre-hooks; a peft model is
    looked through).

    After peft's ``prepare_model_for_kbit_training`` the RMSNorm weights are fp32, and Llama's RMSNorm returns
    ``weight * normalized.to(input_dtype)``, so from the first norm on the hidden states are fp32."""
    from .harness import synthetic_batch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = base.model.language_model.layers
    seen = {}

    def record(name):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            seen.setdefault(name, str(x.dtype).removeprefix("torch."))
        return hook

    points = {"attention input": layers[0].self_attn, "MLP input": layers[0].mlp, "last layer input": layers[-1],
              "lm_head input": base.lm_head}
    hooks = [m.register_forward_pre_hook(record(n), with_kwargs=True) for n, m in points.items()]
    try:
        model.train()
        device = next(base.parameters()).device
        batch = synthetic_batch(base.config, 1, seq_len, device, dtype=torch.bfloat16)
        # under bf16 autocast, as train() runs with mixed_precision="bf16" (a LoRA base in bf16 feeds peft's fp32
        # copy of the projector, which only autocast reconciles)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            model(**batch, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return seen

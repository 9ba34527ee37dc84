"""NF4 from scratch (llava_nb.lab.quant) against bitsandbytes and the QLoRA paper."""

import pytest
import torch

from llava_nb.lab.quant import (bits_per_parameter, double_quantize, int4_levels, nf4_levels, nf4_roundtrip,
                            quantize_blockwise)


def test_nf4_levels_are_bitsandbytes_table():
    bnb = pytest.importorskip("bitsandbytes.functional")
    levels = nf4_levels()
    assert levels.shape == (16,) and levels[0] == -1 and levels[-1] == 1 and (levels == 0).sum() == 1
    assert torch.allclose(levels, bnb.get_4bit_type("nf4", device="cpu"), atol=1e-6)


def test_blockwise_nf4_equals_bitsandbytes_quantize_4bit():
    bnb = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(0)
    w = torch.randn(128, 256) * 0.02
    q, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.allclose(nf4_roundtrip(w, double=False), bnb.dequantize_4bit(q, state), atol=1e-7)
    _, absmax = quantize_blockwise(w, nf4_levels(), 64)
    assert torch.allclose(absmax, state.absmax)


def test_paper_bits_per_parameter():
    """QLoRA section 3: 32/64 = 0.5 bits per parameter for the constants, 8/64 + 32/(64*256) = 0.127 with double
    quantization."""
    assert bits_per_parameter(double=False) == 0.5
    assert round(bits_per_parameter(), 3) == 0.127


def test_double_quantization_keeps_the_constants_and_nf4_beats_int4_on_normal_weights():
    torch.manual_seed(1)
    w = torch.randn(512, 512) * 0.02
    _, absmax = quantize_blockwise(w, nf4_levels(), 64)
    dq = double_quantize(absmax)
    assert dq["codes"].dtype == torch.uint8 and dq["scales"].numel() == -(-absmax.numel() // 256)
    assert ((dq["absmax"] - absmax).abs() / absmax).max() < 0.01
    nf4 = (nf4_roundtrip(w, double=False) - w).pow(2).mean()
    int4 = (nf4_roundtrip(w, double=False, levels=int4_levels()) - w).pow(2).mean()
    assert nf4 < 0.85 * int4


@pytest.mark.filterwarnings("ignore")  # bitsandbytes' CPU kernels announce an optional package
def test_qlora_preparation_turns_the_hidden_states_to_fp32(tmp_path):
    """peft's prepare_model_for_kbit_training casts the RMSNorm weights to fp32, and the hidden states follow: the
    QLoRA chapter's explanation of why QLoRA's steps slow down with the tokens, not only by the dequantization."""
    import llava_nb
    from llava_nb.lab.quant import hidden_state_dtypes
    from llava_nb.methods.setup import load_kwargs, setup_model

    llava_nb.build_model(llava_nb.profile_model("v1.5", "tiny"), seed=0).save_pretrained(tmp_path)

    def set_up(method):  # as train() does: loaded in the method's dtype (4-bit for QLoRA), then its set-up
        model = llava_nb.load_model(tmp_path, **load_kwargs(method, "bf16"))
        return setup_model(model, method, mixed_precision="bf16", gradient_checkpointing=True)

    lora, qlora = hidden_state_dtypes(set_up("lora")), hidden_state_dtypes(set_up("qlora"))
    assert set(lora.values()) == {"bfloat16"}
    assert set(qlora.values()) == {"float32"}
    assert set(qlora) == {"attention input", "MLP input", "last layer input", "lm_head input"}


@pytest.mark.filterwarnings("ignore")  # bitsandbytes' CPU kernels announce an optional package
@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_qloras_4bit_layers_compute_in_the_runs_precision(tmp_path, precision, dtype):
    """LLaVA's compute_dtype follows --bf16 (llava/train/train.py:795, passed as bnb_4bit_compute_dtype at :810):
    the loaded Linear4bit layers compute in bf16 under mixed_precision="bf16" and in fp32 under "no" (an fp32 run
    on a CPU without bf16 instructions must not emulate bf16 in every layer)."""
    import bitsandbytes as bnb

    import llava_nb
    from llava_nb.methods.setup import load_kwargs

    llava_nb.build_model(llava_nb.profile_model("v1.5", "tiny"), seed=0).save_pretrained(tmp_path)
    kwargs = load_kwargs("qlora", precision)
    assert kwargs["quantization_config"].bnb_4bit_compute_dtype == dtype and kwargs["dtype"] == dtype
    layers = [m for m in llava_nb.load_model(tmp_path, **kwargs).modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and {m.compute_dtype for m in layers} == {dtype}


def test_the_roundtrip_runs_where_the_weight_is():
    # a GPU weight must not meet the CPU levels (it did in chapter 11 under the full profile); the meta device stands
    # in for the GPU here: it, too, refuses a CPU operand
    w = torch.empty(4, 256, device="meta")
    assert nf4_roundtrip(w).device == w.device and nf4_roundtrip(w).shape == w.shape


FSDP_STREAM = """
import json, os, sys, warnings
warnings.filterwarnings("ignore")
import torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=0, world_size=1)
import llava_nb
from llava_nb.lab.quant import hidden_state_dtypes
from llava_nb.methods.fsdp import shard_fsdp
from llava_nb.methods.setup import load_kwargs, setup_model
out = {}
for method in ("qlora", "fsdp+qlora"):
    model = llava_nb.load_model(sys.argv[1], **load_kwargs(method, "bf16"))
    model = setup_model(model, method, mixed_precision="bf16", gradient_checkpointing=True)
    out[method] = sorted(set(hidden_state_dtypes(shard_fsdp(model) if method.startswith("fsdp") else model).values()))
dist.destroy_process_group()
print(json.dumps(out))
"""


def test_fsdp2_keeps_qloras_hidden_states_in_bf16_as_the_calculator_counts(tmp_path):
    """Under FSDP2 QLoRA's fp32 norms are computed from bf16 copies, so its hidden states stay bf16 (on DDP they
    widen to fp32, above); the calculator's activation terms follow (``activations.fp32_stream``). One process over
    gloo, in a fresh interpreter."""
    import json
    import subprocess
    import sys

    import llava_nb
    from llava_nb.memory.activations import compute_of
    from llava_nb.methods.registry import get_method
    from llava_nb.training.launch import free_port

    llava_nb.build_model(llava_nb.profile_model("v1.5", "tiny"), seed=0).save_pretrained(tmp_path)
    proc = subprocess.run([sys.executable, "-c", FSDP_STREAM, str(tmp_path), str(free_port())], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"qlora": ["float32"], "fsdp+qlora": ["bfloat16"]}
    assert (compute_of(get_method("qlora")).stream, compute_of(get_method("fsdp+qlora")).stream) == (4, 2)

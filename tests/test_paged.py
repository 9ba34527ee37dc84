"""Paged optimizers (llava_nb.lab.paged), the NF4 Linear timing and the dequantization overhead model."""

import pytest
import torch

from llava_nb.lab.paged import OPTIMIZERS, make_optimizer, paged_optimizer_run
from llava_nb.lab.quant import linear4bit_timing
from llava_nb.lab.throughput import dequant_seconds


@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU:UserWarning")
def test_paged_optimizer_run_on_cpu_counts_the_states():
    runs = {name: paged_optimizer_run(name, width=128, layers=2, steps=3, device="cpu") for name in OPTIMIZERS}
    params = 2 * 128 * 128
    assert all(r["parameters"] == params for r in runs.values())
    for name in ("torch AdamW", "bnb AdamW", "bnb PagedAdamW"):
        assert runs[name]["state_bytes"] == 2 * 4 * params  # two fp32 moments
    # 8-bit (blockwise dynamic quantization): per weight matrix, one byte per moment and parameter, and per moment a
    # 256-value fp32 code map and one fp32 constant per block of 256
    per_matrix = 2 * (128 * 128 + 256 * 4 + 128 * 128 // 256 * 4)
    assert runs["bnb PagedAdamW8bit"]["state_bytes"] == 2 * per_matrix
    # on a CPU bitsandbytes falls back to ordinary tensors: nothing is paged, and the update is the same
    assert all(r["paged_bytes"] == 0 for r in runs.values())
    assert runs["bnb PagedAdamW"]["losses"] == runs["bnb AdamW"]["losses"]
    assert runs["bnb AdamW"]["losses"] == pytest.approx(runs["torch AdamW"]["losses"], rel=1e-5)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="unknown optimizer 'Adafactor'.*bnb PagedAdamW"):
        make_optimizer("Adafactor", [torch.nn.Parameter(torch.zeros(2))])


def test_linear4bit_timing_reports_each_pass():
    r = linear4bit_timing(128, 256, tokens=16, device="cpu", repeats=4)
    keys = [f"{k}_{p}_ms" for k in ("bf16", "nf4") for p in ("forward", "forward_backward")] + ["dequantize_ms"]
    assert all(r[k] > 0 for k in keys)
    assert (r["in_features"], r["out_features"], r["tokens"]) == (128, 256, 16)


def test_dequant_seconds_counts_every_linear_of_every_layer():
    shapes = [(4096, 4096), (4096, 11008), (11008, 4096)]
    one_ms = [{"in_features": i, "out_features": o, "bf16_forward_ms": 1.0, "nf4_forward_ms": 2.0,
               "bf16_forward_backward_ms": 3.0, "nf4_forward_backward_ms": 4.0} for i, o in shapes]
    # llava-1.5-7b: 32 layers x 7 Linears (q, k, v, o at 4096 x 4096; gate, up; down), 1 ms more per pass
    assert dequant_seconds(one_ms) == pytest.approx(32 * 7 * 2 / 1e3)
    assert dequant_seconds(one_ms, checkpointing=False) == pytest.approx(32 * 7 / 1e3)
    with pytest.raises(ValueError, match=r"no linear4bit timing for the shapes \[\(11008, 4096\)\]"):
        dequant_seconds(one_ms[:2])

import pytest
import torch

import llava_nb
from llava_nb.lab.throughput import (communication_bytes, load_engine_runs, matmul_tflops, model_flops, phase_rows,
                                 speed, speed_rows)


def test_model_flops_match_torchs_flop_counter_on_a_real_training_step():
    """torch's FlopCounterMode counts the matmuls and convolutions a real forward + backward executes (not the CPU
    attention kernel); our count without the attention terms must agree, ViT frozen (forward only) included."""
    from torch.utils.flop_counter import FlopCounterMode

    from llava_nb.lab.harness import synthetic_batch
    from llava_nb.methods.stages import freeze_for_stage

    model = freeze_for_stage(llava_nb.build_model("tiny-llava-1.5"), "stage2")
    batch = synthetic_batch(model.config, 2, 100, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    ours = model_flops("tiny-llava-1.5", 2, 100)
    assert ours["total"] - ours["llm_attention"] - ours["vit_attention"] == pytest.approx(
        counter.get_total_flops(), rel=0.01)
    # the 7B: the LLM's matmuls dominate, 6 N per token (N without the embeddings)
    big = model_flops("llava-1.5-7b", 8, 2048)
    assert big["llm_matmul"] / (6 * 8 * 2048) == pytest.approx(6.6e9, rel=0.02)


def test_matmul_rate_and_speed():
    assert matmul_tflops(n=256, iters=3, dtype=torch.float32) > 0
    record = {"model": "llava-1.5-7b", "gpus": 2, "micro_batch": 8, "seq_len": 2048, "step_s": [9.0, 5.0, 2.0, 2.0, 4.0]}
    s = speed(record, tflops=500)
    assert s["step_s"] == 2.0 and s["tokens_per_s"] == 2 * 8 * 2048 / 2.0
    assert s["mfu"] == pytest.approx(model_flops("llava-1.5-7b", 8, 2048)["total"] / (2.0 * 500e12))
    with pytest.raises(ValueError, match="at least 3"):
        speed({**record, "step_s": [1.0, 1.0]}, tflops=500)


def test_communication_bytes():
    z3, fsdp = (communication_bytes("llava-1.5-7b", m, 4) for m in ("zero3", "fsdp"))
    assert z3["all_gather_forward"] == fsdp["all_gather_forward"]  # the same bf16 gathers
    assert fsdp["reduce_scatter"] == 2 * z3["reduce_scatter"]  # fp32 against bf16 gradients
    assert communication_bytes("llava-1.5-7b", "zero3", 1)["total"] == 0  # one rank talks to no one
    with pytest.raises(ValueError, match="zero3 and fsdp"):
        communication_bytes("llava-1.5-7b", "lora", 2)


def test_committed_engine_runs_are_complete():
    runs = load_engine_runs()
    assert runs["matmul"] and all(t > 100 for t in runs["matmul"].values())  # TFLOP/s of a data-centre GPU
    rows = speed_rows(runs["measure"], runs["matmul"])
    for engine in ("zero3", "zero3 large buckets", "fsdp"):
        for gpus in (2, 4):  # the issue asks for 2 and 4 GPUs
            assert {r["point"] for r in rows if r["engine"] == engine and r["gpus"] == gpus} == {"2x2048", "8x2048"}
    assert all(0 < r["mfu"] < 1 for r in rows)
    phases = phase_rows(runs["measure"])
    assert {(p["method"], p["gpus"], p["checkpointing"]) for p in phases} == {
        (m, g, c) for m in ("zero3", "fsdp") for g in (2, 4) for c in (True, False)}
    assert len({p["label"] for p in phases}) == len(phases)
    assert {(r["name"], r["num_processes"]) for r in runs["tiny"]} == {(m, g) for m in ("zero3", "fsdp") for g in (2, 4)}


def test_cpu_step_profile_times_real_training_steps_and_names_the_costliest_operators():
    from llava_nb.lab.harness import synthetic_batch
    from llava_nb.methods.stages import freeze_for_stage
    from llava_nb.lab.throughput import cpu_step_profile

    model = freeze_for_stage(llava_nb.build_model("tiny-llava-1.5"), "stage2")
    model.set_attn_implementation("eager")
    batch = synthetic_batch(model.config, 2, 60, torch.device("cpu"))
    before = model.lm_head.weight.detach().clone()
    out = cpu_step_profile(model, batch, bf16=True, steps=2, warmup=1, top=3)
    assert out["step_ms"] > 0 and len(out["top_ops"]) == 3
    times = list(out["top_ops"].values())
    assert times == sorted(times, reverse=True) and all(isinstance(name, str) and name for name in out["top_ops"])
    assert not torch.equal(before, model.lm_head.weight)  # the steps really trained (forward, backward, AdamW)

"""The estimator table (llava_nb.lab.estimators, chapter 07) against the estimators' own code and the GPU records.

DeepSpeed's numbers are recomputed from counts taken off the meta model and checked against the table its own
``*_all_cold`` function prints; Accelerate's against what ``accelerate estimate-memory`` itself prints, with only
its two Hub look-ups replaced (no network here); the calculator's against ``estimate_memory`` at the settings read
straight from each record.
"""

import argparse
import json
import math
import re
import types

import pytest

from llava_nb.lab import estimators
from llava_nb.memory.estimate import estimate_memory

RECORDS = [json.loads(line) for line in estimators.TRAIN_FULL.read_text().splitlines() if line.strip()]
GIB = 2**30


@pytest.fixture(scope="module")
def table():
    return estimators.estimator_table()


def _meta_counts(name):
    """(every parameter, DeepSpeed's largest layer) of the meta model, counted apart from model_shapes."""
    from deepspeed.runtime.zero.stage3 import model_to_params

    from llava_nb import build_model

    model = build_model(name, device="meta")
    return sum(p.numel() for p in model.parameters()), model_to_params(model)[1], model


def test_a_row_for_every_record(table):
    assert len(RECORDS) > 0 and len(table) == len(RECORDS)
    for (_, row), record in zip(table.iterrows(), RECORDS):
        assert (row["model"], row["method"], row["GPUs"]) == (record["model"], record["method"], record["gpus"])
        if "measured" in record:
            assert row["outcome"] == "ran"
            assert row["measured peak"] == max(record["measured"]["peak_gib"])
            assert row["measured steady"] == max(record["measured"]["steady_gib"])
            assert row["micro-batch"] == record["micro_batch"]
            assert row["seq_len"] == record["measured"]["max_seq_len"]
        else:
            assert row["outcome"] != "ran" and math.isnan(row["measured peak"])


def test_calculator_column_is_estimate_memory(table):
    checked = 0
    for (_, row), record in zip(table.iterrows(), RECORDS):
        if "measured" not in record:
            continue
        est = estimate_memory(record["model"], record["method"], gpus=record["gpus"],
                              micro_batch=record["micro_batch"], seq_len=record["measured"]["max_seq_len"],
                              grad_checkpointing=record["plan"]["grad_checkpointing"])
        assert row["calculator peak"] == pytest.approx(est.peak_gib, rel=1e-12)
        assert row["calculator steady"] == pytest.approx(est.steady_gib, rel=1e-12)
        checked += 1
    assert checked == sum("measured" in r for r in RECORDS)


def test_deepspeed_zero3_row_against_deepspeed(table, capsys):
    from deepspeed.runtime.zero.stage3 import (estimate_zero3_model_states_mem_needs,
                                               estimate_zero3_model_states_mem_needs_all_cold)

    total, largest, _ = _meta_counts("llava-1.5-7b")
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=1, num_nodes=1,
                                                        cpu_offload=False, cpu_offload_params=False, zero_init=True)
    zero3 = table[(table["model"] == "llava-1.5-7b") & (table["method"].isin(["zero3", "fsdp"]))]
    assert len(zero3) >= 2
    assert (zero3["DeepSpeed GPU"] == gpu / GIB).all() and (zero3["DeepSpeed host"] == cpu / GIB).all()
    # the table DeepSpeed prints for the same counts (its *_all_cold returns nothing)
    assert estimate_zero3_model_states_mem_needs_all_cold(total, largest, 1, 1) is None
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if "offload_param=none, offload_optimizer=none, zero_init=1" in x)
    assert f"{gpu / GIB:6.2f}GB" in line and f"{cpu / GIB:7.2f}GB" in line
    offload = table[table["method"] == "zero3-offload"].iloc[0]
    line = next(x for x in printed.splitlines() if "offload_param=OffloadDeviceEnum.cpu, offload_optimizer="
                "OffloadDeviceEnum.cpu, zero_init=1" in x)
    assert re.findall(r"([\d.]+)GB", line) == [f"{offload['DeepSpeed host']:.2f}", f"{offload['DeepSpeed GPU']:.2f}"]


def test_deepspeed_zero2_and_adapters():
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    total, _, _ = _meta_counts("llava-1.5-13b")
    cpu, gpu = estimate_zero2_model_states_mem_needs(total, 4, 1, cpu_offload=False)
    got = estimators.deepspeed_estimate("llava-1.5-13b", "zero2", gpus=4)
    assert got["gpu_gib"] == gpu / GIB and got["host_gib"] == cpu / GIB
    for method in ("lora", "qlora", "zero3+lora", "stage1"):
        got = estimators.deepspeed_estimate("llava-1.5-7b", method)
        assert math.isnan(got["gpu_gib"]) and got["counts"] == estimators.NOT_TRAINED_ALL


def test_deepspeed_cannot_count_a_meta_model():
    """The docstring's warning: *_all_live's model_to_params dedups by data_ptr(), 0 for every meta tensor."""
    from deepspeed.runtime.zero.stage3 import model_to_params

    total, largest, model = _meta_counts("llava-1.5-7b")
    assert model_to_params(model)[0] < total / 10
    from llava_nb.memory.shapes import model_shapes
    assert (model_shapes("llava-1.5-7b").total, model_shapes("llava-1.5-7b").largest_layer) == (total, largest)


def test_accelerate_against_the_command(table, monkeypatch, capsys):
    """accelerate estimate-memory's own code, its Hub look-ups (model_info, AutoConfig.from_pretrained) replaced."""
    import accelerate.commands.estimate as command

    from llava_nb import get_config

    for name in ("llava-1.5-7b", "llava-v1.6-mistral-7b"):
        monkeypatch.setattr(command, "verify_on_hub", lambda repo, token=None: types.SimpleNamespace(
            library_name="transformers", config={}))
        monkeypatch.setattr(command, "AutoConfig", types.SimpleNamespace(
            from_pretrained=lambda *a, name=name, **k: get_config(name)))
        command.estimate_command(argparse.Namespace(model_name=f"llava-hf/{name}", library_name=None,
                                                    dtypes=["float32", "float16"], trust_remote_code=False))
        rows = {cells[1].strip(): [c.strip() for c in cells[2:]]
                for cells in (line.split("│") for line in capsys.readouterr().out.splitlines()) if len(cells) > 4}
        ours = estimators.accelerate_estimate(name)
        assert rows["float16"][2] == ours["printed"]  # "Training using Adam", float16 row
        from accelerate.utils import convert_bytes
        assert rows["float32"][1] == convert_bytes(ours["float32_bytes"])  # "Total Size": the model it sized
        assert set(table.loc[table["model"] == name, "Accelerate (Adam)"]) == {ours["training_gib"]}
    full = estimators.accelerate_estimate("llava-1.5-7b", command=False)
    assert full["class"] == "LlavaForConditionalGeneration" and ours["class"] == "LlavaNextModel"
    assert full["float32_bytes"] > estimators.accelerate_estimate("llava-1.5-7b")["float32_bytes"]  # lm_head

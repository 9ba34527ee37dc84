"""The live calculators' Python side (``llava_nb.live``): the page's settings become the command line's arguments,
and what comes back is what the command line prints."""

from __future__ import annotations

import json

import pytest

from llava_nb.live import DEFAULTS, FIELDS, argv, choices, run


def test_fields_are_the_command_lines_arguments():
    assert argv("memory", {}) == ["memory", "--model", "llava-1.5-7b", "--method", "zero3", "--gpus", "4",
                                  "--micro-batch", "8", "--seq-len", "2048", "--gpu-memory", "79.18", "--json"]
    assert argv("memory", {"grad_checkpointing": "false"})[-1] == "--no-grad-checkpointing"
    assert argv("tokens", {"height": "500", "width": "700"}) == ["tokens", "--model", "llava-v1.6-mistral-7b",
                                                                 "--size", "500x700", "--json"]
    assert argv("compare", {"gpus": "8"}) == ["compare", "--model", "llava-1.5-7b", "--gpus", "8", "--micro-batch", "1",
                                              "--seq-len", "2048", "--gpu-memory", "79.18", "--json"]
    assert argv("lora", {"lora_r": "8", "lora_targets": "q_proj,v_proj"}) == [
        "params", "--model", "llava-1.5-7b", "--method", "lora", "--lora-r", "8", "--lora-targets", "q_proj,v_proj",
        "--json"]
    assert all(set(DEFAULTS[kind]) == set(FIELDS[kind]) for kind in FIELDS)
    with pytest.raises(ValueError, match="unknown calculator 'flops'"):
        argv("flops", {})


@pytest.mark.parametrize("kind, settings", [("memory", {"method": "qlora", "gpu_memory": "24"}),
                                            ("memory", {"model": "llava-v1.6-mistral-7b", "seq_len": "4096"}),
                                            ("tokens", {"height": "336", "width": "1344"}),
                                            ("compare", {"gpus": "2", "grad_checkpointing": "false"}),
                                            ("lora", {"lora_r": "16", "lora_targets": "q_proj,down_proj"})])
def test_run_returns_what_the_command_line_prints(kind, settings, run_cli):
    got = run(kind, settings)
    rc, out, _ = run_cli(argv(kind, settings))
    assert got["rc"] == rc == 0 and json.loads(got["json"]) == json.loads(out) and got["error"] is None


@pytest.mark.parametrize("kind, settings, message", [
    ("memory", {"micro_batch": "0"}, "error: micro_batch must be a whole number >= 1, got 0"),
    ("memory", {"gpus": "two"}, "argument --gpus: invalid int value: 'two'"),
    ("memory", {"method": "zero4"}, "argument --method: invalid choice: 'zero4'"),
    ("tokens", {"height": "0"}, "error: image height must be a positive number of pixels, got 0"),
    ("compare", {"seq_len": "-5"}, "error:"),
    ("lora", {"lora_r": "0"}, "error: lora_r must be a positive integer, got 0"),
    ("lora", {"lora_targets": ""}, "error: --lora-targets is empty")])
def test_bad_settings_get_the_command_lines_one_line_error(kind, settings, message, run_cli):
    got = run(kind, settings)
    assert got["rc"] == 2 and got["json"] is None and message in got["error"]
    assert got["error"] == run_cli(argv(kind, settings))[2]


def test_the_lists_offer_only_what_the_page_can_compute():
    offered = choices()
    assert "llava-1.5-7b" in offered["model"] and not any(m.startswith("tiny-") for m in offered["model"])
    for model in offered["model"]:
        assert run("memory", {"model": model, "seq_len": "4096"})["rc"] == 0, model
    assert "zero3+lora" in offered["method"]


def test_compare_holds_what_memory_prints_for_each_method(run_cli):
    """The comparison is the memory calculator once per method: for each, the same JSON as ``memory``."""
    from llava_nb.methods.registry import BASE_METHODS

    compared = json.loads(run("compare", {"gpus": "2", "micro_batch": "4"})["json"])["methods"]
    assert list(compared) == list(BASE_METHODS)
    for method, result in compared.items():
        rc, out, _ = run_cli(argv("memory", {"method": method, "gpus": "2", "micro_batch": "4", "gpu_memory": "79.18"}))
        assert rc == 0 and json.loads(out) == result, method


def test_the_lora_calculator_counts_what_peft_would_adapt():
    """``params --method lora`` at any rank and targets (pure arithmetic) equals the count walked from the built
    module (tests/test_lora.py checks that walk against peft), and the LLM Linears offered are the module's."""
    import llava_nb
    from llava_nb.methods.lora import LLM_TARGETS, lora_parameter_counts

    assert tuple(choices()["lora_targets"]) == LLM_TARGETS
    big = llava_nb.build_model("llava-1.5-7b", device="meta")
    for r, targets in ((8, ("q_proj", "v_proj")), (64, ("gate_proj", "up_proj", "down_proj")), (128, LLM_TARGETS)):
        got = json.loads(run("lora", {"lora_r": str(r), "lora_targets": ",".join(targets)})["json"])
        walked = lora_parameter_counts(big, r, targets=targets, within="language_model")["adapter"]
        assert got["adapter"] == walked and got["trainable"] == walked + got["breakdown"]["projector"]

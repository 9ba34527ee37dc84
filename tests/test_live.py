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
    assert set(DEFAULTS["memory"]) == set(FIELDS["memory"]) and set(DEFAULTS["tokens"]) == set(FIELDS["tokens"])
    with pytest.raises(ValueError, match="unknown calculator 'flops'"):
        argv("flops", {})


@pytest.mark.parametrize("kind, settings", [("memory", {"method": "qlora", "gpu_memory": "24"}),
                                            ("memory", {"model": "llava-v1.6-mistral-7b", "seq_len": "4096"}),
                                            ("tokens", {"height": "336", "width": "1344"})])
def test_run_returns_what_the_command_line_prints(kind, settings, run_cli):
    got = run(kind, settings)
    rc, out, _ = run_cli(argv(kind, settings))
    assert got["rc"] == rc == 0 and json.loads(got["json"]) == json.loads(out) and got["error"] is None


@pytest.mark.parametrize("kind, settings, message", [
    ("memory", {"micro_batch": "0"}, "error: micro_batch must be a whole number >= 1, got 0"),
    ("memory", {"gpus": "two"}, "argument --gpus: invalid int value: 'two'"),
    ("memory", {"method": "zero4"}, "argument --method: invalid choice: 'zero4'"),
    ("tokens", {"height": "0"}, "error: image height must be a positive number of pixels, got 0")])
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

"""Bad numbers and names fail at once, in one line that names the value, before anything runs."""

import subprocess
import sys

import pytest

from llava_nb.memory.estimate import MemoryConfigError, estimate_memory


@pytest.mark.parametrize("call, says", [
    (lambda: estimate_memory(int(-7e9), "zero3", accounting="paper"), "parameter count must be positive"),
    (lambda: estimate_memory("llava-1.5-7b", "zero3", micro_bach=3), r"unknown option\(s\) \['micro_bach'\]"),
    (lambda: estimate_memory("llava-1.5-7b", "zero3").fits(80, headroom=-3), r"headroom in \[0, 1\)"),
    (lambda: estimate_memory(float("nan"), "zero3", accounting="paper"), "parameter count must be a positive number"),
    (lambda: estimate_memory("llava-1.5-7b", "zero3", micro_batch=0), "micro_batch must be a whole number >= 1, got 0"),
    (lambda: estimate_memory("llava-1.5-7b", "zero3", gpus=0), "gpus must be a whole number >= 1, got 0"),
    (lambda: estimate_memory("llava-1.5-7b", "zero3", seq_len=100), "seq_len=100 is shorter than the 576 image tokens"),
])
def test_the_calculator_refuses_what_it_cannot_mean(call, says):
    with pytest.raises(MemoryConfigError, match=says):
        call()


@pytest.mark.parametrize("argv, says", [
    (["memory", "--model", "llava-1.5-7b", "--method", "zero3", "--headroom", "-3"], "headroom in [0, 1)"),
    (["train", "--model", "tiny-llava-1.55", "--stage", "2"], "did you mean 'tiny-llava-1.5'?"),
    (["train", "--model", "tiny-llava-1.5", "--stage", "1", "--method", "zero33"], "did you mean 'zero3'?"),
    (["train", "--model", "tiny-llava-1.5", "--stage", "1", "--set", "lora_rank=8"], "did you mean 'lora_r'?"),
    (["train", "--model", "tiny-llava-1.5", "--stage", "1", "--set", "max_length"], "write --set KEY=VALUE"),
    (["train", "--model", "tiny-llava-1.5", "--stage", "1", "--set", "resume_lr=-1"], "resume_lr must be positive"),
])
def test_the_command_line_says_what_to_fix_in_one_line(argv, says):
    done = subprocess.run([sys.executable, "-m", "llava_nb", *argv], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and says in done.stderr


def test_a_failed_run_prints_one_line_and_keeps_each_traceback(tmp_path):
    """DDP's unused-parameter error (a frozen-looking ViT set to train, chapter 05's trap) fails both workers: the
    command names the error in one line and where the tracebacks are."""
    from llava_nb.data.synthetic import generate
    from llava_nb.training.worker import TRACEBACK_MARK

    data = generate(tmp_path / "data", n_images=16, n_test=4, seed=1)
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "llava_nb", "train", "--model", "tiny-llava-1.5", "--stage", "1",
                           "--data", str(data["captions"]), "--image-folder", str(data["image_folder"]),
                           "--output-dir", str(out), "--num-processes", "2", "--max-steps", "2", "--batch-size", "8",
                           "--set", "unfreeze_vision=true", "--set", "log_every=0"], capture_output=True, text=True)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith("error: training failed: rank"), done.stderr
    assert "Traceback" not in done.stderr and str(out / "error-rank0.txt") in last
    error, trace = (out / "error-rank0.txt").read_text().split(TRACEBACK_MARK)
    assert "finished reduction in the prior iteration" in error and "Traceback (most recent call last)" in trace


def test_more_processes_than_gpus_is_refused_before_anything_starts(monkeypatch):
    """NCCL refuses two ranks on one GPU only after the model has loaded ("Duplicate GPU detected")."""
    import torch

    from llava_nb.errors import LlavaNbError
    from llava_nb.training.launch import check_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_gpus(1)
    with pytest.raises(LlavaNbError, match=r"num_processes=2 but this machine has 1 GPU\(s\).*CUDA_VISIBLE_DEVICES="):
        check_gpus(2)


def test_a_parameter_count_may_be_written_as_a_float():
    assert estimate_memory(7.5e9, "zero3", accounting="paper").peak_gib == \
        estimate_memory(7_500_000_000, "zero3", accounting="paper").peak_gib


def test_two_ranks_on_a_one_gpu_machine_become_cpu_processes(monkeypatch):
    """device_for_ranks: enough GPUs -> "cuda"; too few -> the GPUs hidden (the variable torch's NVML count reads);
    too few after CUDA was initialised -> an error that says to restart. tests/test_gpu.py checks it on a real GPU."""
    import os

    import torch

    from llava_nb.errors import LlavaNbError
    from llava_nb.training.launch import device_for_ranks

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    visible = lambda: os.environ.get("CUDA_VISIBLE_DEVICES") != ""  # noqa: E731 - NVML's count, as torch reads it
    monkeypatch.setattr(torch.cuda, "is_available", visible)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if visible() else 0)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert device_for_ranks(1) == "cuda" and "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(LlavaNbError, match="2 processes need 2 GPUs .* has 1 GPU.*restart the kernel"):
        device_for_ranks(2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert device_for_ranks(2) == "cpu" and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert device_for_ranks(2) == "cpu"  # hidden already: a CPU machine now

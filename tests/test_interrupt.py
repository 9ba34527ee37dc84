"""Ctrl-C, as a terminal sends it (SIGINT to the whole process group), stops a real run at a step boundary: the
step is saved, the command prints one line naming the checkpoint, and running the same command again continues
from it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from llava_nb.data.synthetic import generate


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data"), n_images=32, n_test=4, seed=1)


@pytest.mark.parametrize("method, processes", [("ddp", 1), ("ddp", 2), ("fsdp", 1)])
def test_ctrl_c_saves_the_step_and_the_same_command_continues(data, tmp_path, method, processes):
    """ddp on 1 process trains in the command's own process, on 2 in forked ones (notebook_launcher); fsdp on 1
    starts a fresh launcher (torchrun), whose own shutdown traceback must stay in launcher.log."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "llava_nb", "train", "--model", "tiny-llava-1.5", "--stage", "1", "--data",
               str(data["captions"]), "--image-folder", str(data["image_folder"]), "--output-dir", str(out),
               "--method", method, "--num-processes", str(processes), "--batch-size", "8", "--max-steps", "100000", "--save-every", "3",
               "--set", "log_every=0"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # its own process group, as a terminal's job
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step_3").is_dir():  # training has started and saved once
        assert run.poll() is None and time.time() < deadline, run.communicate()
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted at step ") and "run the same command again" in last, stderr
    assert "Traceback" not in stderr
    stopped = int(last.split()[3])
    latest = out / "checkpoints" / f"step_{stopped}"
    assert latest.is_dir() and str(latest) in last and not list((out / "checkpoints").glob("*.partial"))
    again = subprocess.run([*command[:-2], "--set", f"stop_after={stopped + 1}", "--set", "log_every=0"],
                           capture_output=True, text=True, timeout=300)
    assert f"continuing from {latest}" in again.stdout, again.stderr

"""A few real optimizer steps of every training method on GPUs: what `make TORCH=system test` adds on a GPU
machine. Skipped without CUDA (every other test covers the CPU path of the same code).

Each method trains the tiny LLaVA-1.5's stage 2 for a few steps with ``train()`` on every GPU of the machine, from
one stage-1 model, and the run must show what a CPU cannot: CUDA processes, finite losses, and the run's own record
of its memory (each rank's allocator peak, steady and set-up figures) and speed (tokens per second and MFU).
"""

import math

import pytest
import torch

from llava_nb.data.synthetic import generate
from llava_nb.models.flops import peak_tflops
from llava_nb.training.api import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

#: method -> the package it needs beyond the pinned core
METHODS = {"ddp": None, "zero2": "deepspeed", "zero3": "deepspeed", "zero3-offload": "deepspeed", "fsdp": None,
           "lora": None, "zero3+lora": "deepspeed", "qlora": "bitsandbytes"}
STEPS = 3


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu")
    data = generate(tmp / "data", n_images=64, n_test=8, seed=1)
    run = train("tiny-llava-1.5", 1, data=data["captions"], image_folder=data["image_folder"],
                output_dir=tmp / "stage1", max_steps=STEPS, batch_size=8, log_every=0)
    return data, run


@pytest.mark.parametrize("method", METHODS)
def test_a_few_real_steps_of_each_method_on_gpus(method, stage1, tmp_path):
    if METHODS[method]:
        pytest.importorskip(METHODS[method])
    data, s1 = stage1
    gpus = torch.cuda.device_count()
    r = train(s1["final_dir"], 2, method=method, data=data["instruct"], image_folder=data["image_folder"],
              output_dir=tmp_path / method, max_steps=STEPS, batch_size=8 * gpus, log_every=0, eval_max=4,
              mixed_precision="bf16")
    assert r["finished"] and r["steps"] == STEPS and r["num_processes"] == gpus
    assert all(math.isfinite(x) for x in r["losses"])
    m = r["measured"]
    assert len(m["peak_gib"]) == len(m["steady_gib"]) == len(m["setup_gib"]) == gpus
    offloads = "offload" in method  # ZeRO-3 offload keeps the tiny model's weights and states in host memory
    for peak, steady, setup in zip(m["peak_gib"], m["steady_gib"], m["setup_gib"]):
        assert (0 <= setup if offloads else 0 < setup) and setup <= peak and 0 < steady <= peak
    assert m["tokens"] > 0 and m["tokens_per_s"] > 0
    if peak_tflops(m["device_name"]):
        assert 0 < m["mfu"] < 1


def test_importing_bitsandbytes_initialises_cuda_and_forbids_fork():
    """Why a notebook must launch before it imports peft: on a GPU, ``import bitsandbytes`` (which peft and
    ``transformers.optimization`` do) initialises CUDA in the importing process, and accelerate's notebook_launcher
    refuses to fork from then on (``training.launch``; the LoRA chapter). Nothing in train() imports it first."""
    import subprocess
    import sys

    code = ("import sys, torch; before = torch.cuda.is_initialized(); import peft; "
            "print(before, 'bitsandbytes' in sys.modules, torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]


def test_two_ranks_on_fewer_gpus_run_as_cpu_processes():
    """On a machine with fewer than two GPUs, device_for_ranks(2) hides them, and a two-process train() then runs
    as CPU processes (the chapters on ZeRO and FSDP do this); with two or more, the processes get one GPU each."""
    import json
    import subprocess
    import sys

    code = ("import json, torch, llava_nb; device = llava_nb.device_for_ranks(2); "
            "r = llava_nb.train('tiny-llava-1.5', 1, num_processes=2, max_steps=2, batch_size=4, log_every=0, "
            "n_images=32, n_test=4, output_dir=sys.argv[1]); "
            "print(json.dumps([device, torch.cuda.device_count(), r['device'], r['num_processes']]))")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", "import sys; " + code, tmp], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    device, seen, ran_on, processes = json.loads(out.stdout.strip().splitlines()[-1])
    gpus = torch.cuda.device_count()
    assert processes == 2
    if gpus >= 2:
        assert (device, seen) == ("cuda", gpus) and ran_on.startswith("cuda")
    else:
        assert (device, seen) == ("cpu", 0) and ran_on == "cpu"

"""The training plan: the calculator picks the micro-batch and the accumulation keeps the global batch; a plan that
cannot fit stops with what would."""

import json
import re
import subprocess
import sys

import pytest

from llava_nb.memory.estimate import estimate_memory
from llava_nb.training.plan import PlanError, make_plan


@pytest.mark.parametrize("model, method, gpus", [("llava-1.5-7b", "zero3", 8), ("llava-1.5-7b", "lora", 1),
                                                 ("llava-1.5-13b", "zero3+lora", 2), ("llava-v1.6-mistral-7b", "fsdp", 4)])
def test_the_plan_is_the_largest_micro_batch_that_fits_and_keeps_the_global_batch(model, method, gpus):
    plan = make_plan(model, method, gpus=gpus, global_batch=128)
    assert plan.micro_batch * plan.gpus * plan.accumulation == 128 and plan.fits
    assert plan.micro_batch <= plan.largest_that_fits
    bigger = [m for m in range(plan.micro_batch + 1, 128 // gpus + 1) if 128 % (gpus * m) == 0]
    if bigger:  # the next micro-batch that would keep the global batch does not fit
        assert not estimate_memory(model, method, gpus=gpus, micro_batch=bigger[0]).fits()


def test_llavas_own_zero3_run_is_what_the_plan_picks():
    """LLaVA-1.5's finetune.sh trains with ZeRO-3 at 16 per GPU on 8 GPUs, no accumulation (scripts/v1_5/
    finetune.sh: --per_device_train_batch_size 16, --gradient_accumulation_steps 1) on 80 GB cards."""
    plan = make_plan("llava-1.5-7b", "zero3", gpus=8, global_batch=128)
    assert (plan.micro_batch, plan.accumulation) == (16, 1)


def test_nothing_fits_names_what_would():
    with pytest.raises(PlanError) as err:
        make_plan("llava-1.5-13b", "ddp", gpus=1)
    message = str(err.value)
    assert "\n" not in message and "ddp does not fit 1 GPU(s)" in message
    for name, peak in re.findall(r"(zero3\+lora|lora|qlora|zero3-offload) \(([\d.]+) GiB\)", message):
        est = estimate_memory("llava-1.5-13b", name)
        assert est.fits() and f"{est.peak_gib:.1f}" == peak


def test_an_override_that_does_not_fit_says_so():
    plan = make_plan("llava-1.5-7b", "lora", micro_batch=128)
    assert plan.chosen_by == "override" and not plan.fits and plan.largest_that_fits < 128


def test_an_offload_that_the_host_cannot_hold_stops_before_training():
    """The record behind the margin: zero3-offload of llava-1.5-7b on a 125 GiB H200 host was killed by the
    out-of-memory killer (data/gpu/train_full.jsonl); the plan for that machine must refuse it, and a machine with
    twice the RAM gets it. Methods that offload nothing are not checked against the host."""
    from llava_nb.paths import DATA_DIR

    records = [json.loads(line) for line in (DATA_DIR / "gpu" / "train_full.jsonl").read_text().splitlines()]
    killed = [r for r in records if r["method"] == "zero3-offload" and "Signal 9 (SIGKILL)" in r.get("error", "")]
    assert killed and "GiB of 140.401 GiB (fits)" in killed[0]["error"]
    with pytest.raises(PlanError, match=r"needs about 160\.\d GiB of host memory.*125 GiB.*would fit: zero3\+lora"):
        make_plan("llava-1.5-7b", "zero3-offload", gpu_memory_gib=140.4, global_batch=32, host_memory_gib=125)
    plan = make_plan("llava-1.5-7b", "zero3-offload", gpu_memory_gib=140.4, global_batch=32, host_memory_gib=250)
    assert plan.host_gib == pytest.approx(estimate_memory("llava-1.5-7b", "zero3-offload", micro_batch=plan.micro_batch,
                                                          seq_len=2048).cpu_gib) and "host 160." in plan.summary()
    assert make_plan("llava-1.5-7b", "lora", gpu_memory_gib=140.4, host_memory_gib=8).host_gib == 0


@pytest.mark.parametrize("kwargs, fix", [({"gpus": 0}, "gpus must be"), ({"host_memory_gib": -1}, "host_memory_gib"), ({"global_batch": 100, "gpus": 8}, "split"),
                                         ({"micro_batch": 3}, "not a multiple"), ({"headroom": -3}, "headroom"),
                                         ({"gpu_memory_gib": 0}, "gpu_memory_gib")])
def test_bad_plans_say_what_to_fix(kwargs, fix):
    with pytest.raises(PlanError, match=fix):
        make_plan("llava-1.5-7b", "zero3", **kwargs)


def test_the_command_line_prints_the_same_plan():
    out = subprocess.run([sys.executable, "-m", "llava_nb", "plan", "--model", "llava-hf/llava-1.5-7b-hf", "--method",
                          "zero3", "--gpus", "8", "--json"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == make_plan("llava-1.5-7b", "zero3", gpus=8).as_dict()
    failed = subprocess.run([sys.executable, "-m", "llava_nb", "plan", "--model", "llava-1.5-13b", "--method", "ddp"],
                            capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "would fit" in failed.stderr

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


@pytest.mark.parametrize("kwargs, fix", [({"gpus": 0}, "gpus must be"), ({"global_batch": 100, "gpus": 8}, "split"),
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

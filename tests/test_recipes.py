"""The training recipes: LLaVA's DeepSpeed files and how their "auto" entries resolve."""

import json

import pytest

from llava_nb.methods.deepspeed import LLAVA_FILES, deepspeed_config, llava_deepspeed_file, llava_deepspeed_path


#: haotian-liu/LLaVA@c121f04 scripts/zero2.json, scripts/zero3.json and scripts/zero3_offload.json, verbatim (the
#: tests cannot read LLaVA's repository)
LLAVA_JSON = {
    "zero2": """{
    "fp16": {
        "enabled": "auto",
        "loss_scale": 0,
        "loss_scale_window": 1000,
        "initial_scale_power": 16,
        "hysteresis": 2,
        "min_loss_scale": 1
    },
    "bf16": {
        "enabled": "auto"
    },
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "zero_optimization": {
        "stage": 2,
        "overlap_comm": true,
        "contiguous_gradients": true,
        "sub_group_size": 1e9,
        "reduce_bucket_size": "auto"
    }
}""",
    "zero3": """{
    "fp16": {
        "enabled": "auto",
        "loss_scale": 0,
        "loss_scale_window": 1000,
        "initial_scale_power": 16,
        "hysteresis": 2,
        "min_loss_scale": 1
    },
    "bf16": {
        "enabled": "auto"
    },
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": true,
        "contiguous_gradients": true,
        "sub_group_size": 1e9,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9,
        "stage3_gather_16bit_weights_on_model_save": true
    }
}""",
    "zero3-offload": """{
  "fp16": {
    "enabled": "auto",
    "loss_scale": 0,
    "loss_scale_window": 1000,
    "initial_scale_power": 16,
    "hysteresis": 2,
    "min_loss_scale": 1
  },
  "bf16": {
    "enabled": "auto"
  },
  "optimizer": {
    "type": "AdamW",
    "params": {
      "lr": "auto",
      "betas": "auto",
      "eps": "auto",
      "weight_decay": "auto"
    }
  },
  "scheduler": {
    "type": "WarmupLR",
    "params": {
      "warmup_min_lr": "auto",
      "warmup_max_lr": "auto",
      "warmup_num_steps": "auto"
    }
  },
  "zero_optimization": {
    "stage": 3,
    "offload_optimizer": {
      "device": "cpu",
      "pin_memory": true
    },
    "offload_param": {
      "device": "cpu",
      "pin_memory": true
    },
    "overlap_comm": true,
    "contiguous_gradients": true,
    "sub_group_size": 1e9,
    "reduce_bucket_size": "auto",
    "stage3_prefetch_bucket_size": "auto",
    "stage3_param_persistence_threshold": "auto",
    "stage3_max_live_parameters": 1e9,
    "stage3_max_reuse_distance": 1e9,
    "gather_16bit_weights_on_model_save": true
  },
  "gradient_accumulation_steps": "auto",
  "gradient_clipping": "auto",
  "train_batch_size": "auto",
  "train_micro_batch_size_per_gpu": "auto",
  "steps_per_print": 1e5,
  "wall_clock_breakdown": false
}""",
}
#: What a DeepSpeed config without "gradient_clipping" clips at in LLaVA's runs: deepspeed 0.12.6 (LLaVA's pin,
#: pyproject.toml:26) runtime/constants.py:211 ``GRADIENT_CLIPPING_DEFAULT = 0.``, no clipping. (deepspeed 0.19.8,
#: installed here, says 1.0: runtime/constants.py:203.)
LLAVA_DEEPSPEED_CLIPPING_DEFAULT = 0.0
#: What "auto" becomes: the Trainer's max_grad_norm, which no LLaVA script sets (transformers 4.37.2
#: training_args.py:739, default 1.0; integrations/deepspeed.py:150 fills it in)
TRAINER_MAX_GRAD_NORM = 1.0


def llava_clipping(name: str) -> float:
    """The gradient norm LLaVA's run with its file ``name`` clipped at (0.0: none)."""
    value = json.loads(LLAVA_JSON[name]).get("gradient_clipping", LLAVA_DEEPSPEED_CLIPPING_DEFAULT)
    return TRAINER_MAX_GRAD_NORM if value == "auto" else value


@pytest.mark.parametrize("name", LLAVA_FILES)
def test_our_copies_are_llavas_files(name):
    assert llava_deepspeed_file(name) == json.loads(LLAVA_JSON[name])


@pytest.mark.parametrize("method", ["ddp", "zero1", "zero2", "zero3", "zero3-offload"])
def test_gradient_clipping_is_llavas_unless_max_grad_norm_says_otherwise(method):
    """None: what LLaVA's file did (zero1 uses zero2.json; ddp is DeepSpeed's stage 0 here); a value: that value.
    The key is always written: DeepSpeed's own reading of the config (its installed version) must agree."""
    llava = llava_clipping({"ddp": "zero2", "zero1": "zero2"}.get(method, method))
    assert llava == (1.0 if method == "zero3-offload" else 0.0)
    default, set_ = deepspeed_config(method, 64), deepspeed_config(method, 64, max_grad_norm=0.5)
    assert default["gradient_clipping"] == llava and set_["gradient_clipping"] == 0.5
    assert deepspeed_config(method, 64, max_grad_norm=0)["gradient_clipping"] == 0.0
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import get_gradient_clipping

    assert get_gradient_clipping(default) == llava and get_gradient_clipping(set_) == 0.5


@pytest.mark.parametrize("name", LLAVA_FILES)
def test_shipped_files_are_llavas_settings(name):
    assert json.loads(llava_deepspeed_path(name).read_text()) == llava_deepspeed_file(name)


@pytest.mark.parametrize("name", LLAVA_FILES)
def test_auto_resolves_as_the_hf_trainer_resolves_it(name, tmp_path):
    """transformers' own HfTrainerDeepSpeedConfig fills the "auto" entries of LLaVA's files (copied above);
    deepspeed_config must agree, and clip where LLaVA's runs clipped (only zero3_offload.json, at max_grad_norm)."""
    pytest.importorskip("deepspeed")
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from llava_nb import build_model

    model = build_model("llava-1.5-7b", device="meta")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, gradient_accumulation_steps=1,
                             use_cpu=True, report_to=[])
    hf = HfTrainerDeepSpeedConfig(json.loads(LLAVA_JSON[name]))
    hf.trainer_config_process(args)
    hf.trainer_config_finalize(args, model, num_training_steps=100)
    ours = deepspeed_config(name, model.config.text_config.hidden_size, micro_batch=16, world_size=1, bf16=False)
    assert hf.config["zero_optimization"] == ours["zero_optimization"]
    clipping = hf.config.get("gradient_clipping", LLAVA_DEEPSPEED_CLIPPING_DEFAULT)
    assert clipping == ours["gradient_clipping"] == (args.max_grad_norm if name == "zero3-offload" else 0.0)
    assert hf.config["train_micro_batch_size_per_gpu"] == ours["train_micro_batch_size_per_gpu"] == 16
    assert hf.config["bf16"]["enabled"] is ours["bf16"]["enabled"] is False


def test_zero3_trap_and_its_fix():
    """Weights loaded into ZeRO-3-partitioned parameters meet empty torch.Size([0]) shards; GatheredParameters fixes
    it (2 CPU processes over gloo)."""
    pytest.importorskip("deepspeed")
    from llava_nb.lab.zero3_trap import run_zero3_trap

    report = run_zero3_trap()
    assert report["shape seen by the module"] == [0] and report["real shape (ds_shape)"] == [32, 64]
    assert "size mismatch" in report["plain load_state_dict"] and "torch.Size([0])" in report["plain load_state_dict"]
    assert report["weight sum after GatheredParameters load (expected 1024)"] == 1024.0


def test_hf_trainer_runs_llavas_zero3_json_as_a_deepspeed_engine_on_two_cpu_processes(tmp_path):
    """The Trainer path for real: 2 gloo processes, LLaVA's zero3.json. Each rank must hold a DeepSpeed engine that
    counts 2 processes (transformers 5.24 alone would leave each CPU rank alone: hf_trainer._deepspeed_state_on_cpu)
    and half of the weights, with every "auto" resolved as deepspeed_config resolves it for the tiny model."""
    pytest.importorskip("deepspeed")
    from llava_nb.lab.hf_trainer import run_hf_trainer

    ranks = run_hf_trainer("zero3", tmp_path, processes=2, max_steps=2)
    for r in ranks:
        assert r["engine"] == "DeepSpeedEngine" and r["world_size"] == 2
        assert 2 * r["local_numel"] == pytest.approx(r["numel"], rel=1e-3)
        assert len(r["losses"]) == 2 and all(0 < x < 10 for x in r["losses"])
        ours = deepspeed_config("zero3", 128, micro_batch=4, world_size=2, bf16=False)
        theirs = r["deepspeed_config"]
        assert theirs["zero_optimization"] == ours["zero_optimization"]
        assert theirs["train_batch_size"] == ours["train_batch_size"] == 8
        # the whole config: what differs is logging, the fp16 block (off in both), the Trainer's leave to use a torch
        # optimizer, and clipping: LLaVA's file has no gradient_clipping key, so the engine clips at the installed
        # DeepSpeed's default (LLaVA's pinned 0.12.6 said 0, as train() writes)
        from deepspeed.runtime.config import get_gradient_clipping

        differ = {k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)}
        assert differ == {"fp16", "steps_per_print", "wall_clock_breakdown", "zero_allow_untested_optimizer",
                          "gradient_clipping"}
        assert theirs["fp16"]["enabled"] is False and "fp16" not in ours and not ours["wall_clock_breakdown"]
        assert "gradient_clipping" not in theirs and r["gradient_clipping"] == get_gradient_clipping({})
        assert ours["gradient_clipping"] == 0.0
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the loss is reduced over the ranks


def test_the_real_checkpoint_lora_recipe_is_finetune_lora_sh():
    """LoRA on a real checkpoint: finetune_lora.sh's settings (FULL_LORA; each checked against its line of LLaVA in
    tests/test_recipe_table.py), every other setting finetune.sh's; what train() picks for zero3+lora and lora."""
    import dataclasses

    from llava_nb.methods.registry import get_method
    from llava_nb.training.api import _config
    from llava_nb.training.config import FULL_LORA, TrainConfig

    lora, full = TrainConfig.recipe(False, 2, adapter=True), TrainConfig.recipe(False, 2)
    assert {k: getattr(lora, k) for k in FULL_LORA} == FULL_LORA
    assert (lora.lr, lora.mm_projector_lr) == (2e-4, 2e-5)
    others = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in FULL_LORA]
    assert {k: getattr(lora, k) for k in others} == {k: getattr(full, k) for k in others}
    for method in ("zero3+lora", "lora"):
        assert _config(None, {}, False, 2, get_method(method).for_stage(2)) == lora
    assert TrainConfig.recipe(True, 2, adapter=True).mm_projector_lr is None  # the tiny LoRA recipe: one lr

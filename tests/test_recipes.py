"""The training recipes: LLaVA's DeepSpeed files and how their "auto" entries resolve."""

import json

import pytest

from llava_nb.methods.deepspeed import LLAVA_FILES, deepspeed_config, llava_deepspeed_file, llava_deepspeed_path


@pytest.mark.parametrize("name", LLAVA_FILES)
def test_shipped_files_are_llavas_settings(name):
    assert json.loads(llava_deepspeed_path(name).read_text()) == llava_deepspeed_file(name)


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_auto_resolves_as_the_hf_trainer_resolves_it(name, tmp_path):
    """transformers' own HfTrainerDeepSpeedConfig fills LLaVA's "auto" entries; deepspeed_config must agree."""
    pytest.importorskip("deepspeed")
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from llava_nb import build_model

    model = build_model("llava-1.5-7b", device="meta")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, gradient_accumulation_steps=1,
                             use_cpu=True, report_to=[])
    hf = HfTrainerDeepSpeedConfig(llava_deepspeed_file(name))
    hf.trainer_config_process(args)
    hf.trainer_config_finalize(args, model, num_training_steps=100)
    ours = deepspeed_config(name, model.config.text_config.hidden_size, micro_batch=16, world_size=1, bf16=False)
    assert hf.config["zero_optimization"] == ours["zero_optimization"]
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
        assert r["deepspeed_config"]["zero_optimization"] == ours["zero_optimization"]
        assert r["deepspeed_config"]["train_batch_size"] == ours["train_batch_size"] == 8
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the loss is reduced over the ranks


def test_the_full_recipe_is_what_its_sources_say():
    """Each real-checkpoint default equals the flag value of the LLaVA script line it cites (FULL_SOURCES)."""
    import dataclasses

    from llava_nb.training.config import FULL_HYPERPARAMS, FULL_METHODS, FULL_SOURCES, TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for stage in (1, 2):
        for key, sources in FULL_SOURCES.items():
            source = sources[stage - 1]
            value = FULL_METHODS[stage] if key == "method" else FULL_HYPERPARAMS[stage].get(key, defaults[key])
            if source == "(not set)":
                assert value == defaults[key], key
                continue
            flag_value = source.split()[2].rstrip(",")
            if key == "method":
                assert flag_value == f"./scripts/{value}.json"
            elif key == "batch_size":
                assert int(flag_value) * 8 == value  # per GPU, on LLaVA's 8 GPUs
            elif key == "mixed_precision":
                assert (flag_value == "True") == (value == "bf16")
            elif isinstance(value, bool):
                assert (flag_value == "True") == value, key
            else:
                assert float(flag_value) == value, key

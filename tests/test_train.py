"""train(): both stages, resume from a checkpoint, real-checkpoint code path, errors. Small and in-process."""

import importlib
import json
import time
from pathlib import Path

import pytest
import torch

import llava_nb
from llava_nb.data.synthetic import generate
from llava_nb.training.api import TrainingError, train

FAST = dict(num_processes=1, batch_size=8, log_every=0, eval_max=10)


def assert_same_weights(folder_a, folder_b, atol=None):
    """Two saved models hold the same tensors: equal (``atol`` None) or within ``atol``."""
    a, b = (llava_nb.load_model(f).state_dict() for f in (folder_a, folder_b))
    same = torch.equal if atol is None else (lambda x, y: torch.allclose(x, y, atol=atol))
    assert a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


def stopped_and_resumed(method, folder, **common):
    """``method`` stopped after step 2 (a checkpoint every 2 steps) and resumed from that checkpoint in ``folder``;
    the resumed run's result, with its last checkpoint."""
    common = {**common, "save_every": 2}
    train("tiny-llava-1.5", 1, method=method, output_dir=folder, stop_after=2, **common)
    resumed = train("tiny-llava-1.5", 1, method=method, output_dir=folder,
                    resume_from=str(folder / "checkpoints" / "step_2"), **common)
    resumed["last_checkpoint"] = str(folder / "checkpoints" / f"step_{resumed['steps']}")
    return resumed


def assert_merged_equals_adapted(result, base_dir):
    """An adapter run's saved final model (the merge) gives the logits of its adapter loaded onto ``base_dir``;
    returns the merged model and the synthetic batch it was checked on."""
    from llava_nb.methods.lora import load_lora
    from llava_nb.lab.harness import synthetic_batch

    merged = llava_nb.load_model(result["final_dir"]).eval()
    adapted = load_lora(llava_nb.load_model(base_dir).eval(), result["adapter_dir"]).eval()
    batch = synthetic_batch(merged.config, 1, 60, torch.device("cpu"))
    batch.pop("labels")
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, adapted(**batch).logits, atol=1e-5)
    return merged, batch


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), n_images=48, n_test=10, seed=1)


def test_stage1_then_stage2_writes_safetensors_and_results(small_data, tmp_path):
    r1 = train("tiny-llava-1.5", 1, data=small_data["captions"], image_folder=small_data["image_folder"],
               output_dir=tmp_path / "s1", max_steps=3, **FAST)
    final = tmp_path / "s1" / "final"
    assert r1["steps"] == 3 and r1["finished"] and (final / "model.safetensors").exists()
    assert not list(final.glob("*.bin"))
    reloaded = llava_nb.load_model(final)
    assert reloaded.config.llava_nb_name == "tiny-llava-1.5"
    again = train("tiny-llava-1.5", 1, data=small_data["captions"], image_folder=small_data["image_folder"],
                  output_dir=tmp_path / "s1", max_steps=3, **FAST)
    assert again["cached"] and again["losses"] == r1["losses"]  # the same finished run is reused
    forced = train("tiny-llava-1.5", 1, data=small_data["captions"], image_folder=small_data["image_folder"],
                   output_dir=tmp_path / "s1", max_steps=3, force=True, **FAST)
    assert "cached" not in forced and forced["losses"] == pytest.approx(r1["losses"], abs=1e-6)  # deterministic
    r2 = train(str(final), 2, data=small_data["instruct"], image_folder=small_data["image_folder"],
               output_dir=tmp_path / "s2", max_steps=3, eval_data=small_data["test"], **FAST)
    assert r2["template"] == "vicuna_v1" and 0.0 <= r2["eval_accuracy"] <= 1.0
    # the tiny stage-2 recipe switches both towers to eager attention; stage 1 keeps the default
    assert r1["attention"] == {"vision": "sdpa", "language": "sdpa"}
    assert r2["attention"] == {"vision": "eager", "language": "eager"}
    assert 0.0 <= r2["eval_blank_accuracy"] <= 1.0
    assert set(r2["eval_by_type"]) == {"colour", "shape", "count", "position", "exists"}
    saved = json.loads((tmp_path / "s2" / "result.json").read_text())
    assert saved["train_loss"] == r2["train_loss"]


def test_stage1_trains_only_the_projector(small_data, tmp_path):
    before = llava_nb.build_model("tiny-llava-1.5")
    from llava_nb.training.pretrain import load_pretrained_parts

    load_pretrained_parts(before)
    train("tiny-llava-1.5", 1, data=small_data["captions"], image_folder=small_data["image_folder"],
          output_dir=tmp_path, max_steps=2, **FAST)
    after = llava_nb.load_model(tmp_path / "final")
    a, b = before.state_dict(), after.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)


def test_resume_gives_the_same_losses(small_data, tmp_path):
    common = dict(data=small_data["captions"], image_folder=small_data["image_folder"], max_steps=6, **FAST)
    full = train("tiny-llava-1.5", 1, output_dir=tmp_path / "full", **common)
    train("tiny-llava-1.5", 1, output_dir=tmp_path / "cut", save_every=2, stop_after=4, **common)
    checkpoint = tmp_path / "cut" / "checkpoints" / "step_4"
    assert checkpoint.exists()
    resumed = train("tiny-llava-1.5", 1, output_dir=tmp_path / "cut", resume_from=str(checkpoint), **common)
    assert resumed["steps"] == 6 and len(resumed["losses"]) == 6
    assert resumed["losses"] == pytest.approx(full["losses"], abs=1e-6)
    assert_same_weights(tmp_path / "full" / "final", tmp_path / "cut" / "final", atol=1e-6)


def test_v16_trains_with_anyres(tmp_path):
    data = generate(tmp_path / "syn", n_images=16, n_test=4, sizes="anyres")
    r = train("tiny-llava-v1.6", 1, data=data["captions"], image_folder=data["image_folder"],
              output_dir=tmp_path / "run", max_steps=2, **FAST)
    assert r["finished"] and r["template"] == "plain"
    r = train(r["final_dir"], 2, data=data["instruct"], image_folder=data["image_folder"],
              output_dir=tmp_path / "run2", max_steps=2, eval_data=data["test"], **FAST)
    assert r["template"] == "mistral_instruct"


def test_real_checkpoint_code_path(small_data, tmp_path):
    """A tiny model saved in plain Hugging Face format (no llava_nb name): the path a real checkpoint takes."""
    model = llava_nb.build_model("tiny-llava-1.5")
    del model.config.llava_nb_name
    model.save_pretrained(tmp_path / "hf")
    llava_nb.build_processor("tiny-llava-1.5").save_pretrained(tmp_path / "hf")
    with pytest.raises(llava_nb.LlavaNbError, match="needs data"):
        train(str(tmp_path / "hf"), 2)
    r = train(str(tmp_path / "hf"), 2, data=small_data["instruct"], image_folder=small_data["image_folder"],
              output_dir=tmp_path / "run", max_steps=2, lr=1e-4, **FAST)
    assert r["hyperparams"]["max_length"] == 2048  # LLaVA-1.5's recipe, not the tiny one
    answer = llava_nb.training.inference.answer(r["final_dir"], small_data["image_folder"] / "test" / "000" / "test_000000.png",
                                       "How many shapes are there?", max_new_tokens=3)
    assert isinstance(answer, str)


def test_errors(small_data, tmp_path):
    with pytest.raises(llava_nb.LlavaNbError, match="stage 1 does not train"):
        train("tiny-llava-1.5", 1, method="qlora")
    with pytest.raises(llava_nb.UnknownMethodError, match="engines: ddp, zero1"):
        train("tiny-llava-1.5", 1, method="zero4")
    with pytest.raises(llava_nb.LlavaNbError, match="stage must be 1 or 2"):
        train("tiny-llava-1.5", 3)
    with pytest.raises(llava_nb.LlavaNbError, match="unknown training setting"):
        train("tiny-llava-1.5", 1, learning_rate=1)
    # a batch that cannot be split is refused in this process, before any worker starts
    with pytest.raises(llava_nb.LlavaNbError, match="must equal processes x micro_batch"):
        train("tiny-llava-1.5", 1, data=small_data["captions"], image_folder=small_data["image_folder"],
              output_dir=tmp_path, num_processes=1, batch_size=8, gradient_accumulation_steps=3)
    assert not (tmp_path / "result.json").exists() and not list(tmp_path.glob("error-rank*"))
    with pytest.raises(llava_nb.LlavaNbError, match="lr must be float, got 'abc'"):
        train("tiny-llava-1.5", 1, lr="abc")


def test_cli_train_prints_json_last_and_generate_answers(small_data, tmp_path, capsys):
    from llava_nb.cli import main

    argv = ["train", "--model", "tiny-llava-1.5", "--stage", "1", "--num-processes", "1", "--data",
            str(small_data["captions"]), "--image-folder", str(small_data["image_folder"]), "--output-dir",
            str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "8", "--set", "log_every=0"]
    assert main(argv) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["steps"] == 2 and "train_loss" in last and "seconds" in last
    image = small_data["image_folder"] / "test" / "000" / "test_000000.png"
    assert main(["generate", "--model", last["final_dir"], "--image", str(image), "--prompt", "How many?",
                 "--max-new-tokens", "2"]) == 0
    assert main(["generate", "--model", last["final_dir"], "--image", str(tmp_path / "nope.png"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "no image file" in err and "warning" not in err  # a trained folder: no warning
    assert main(["generate", "--model", "tiny-llava-1.5", "--image", str(image), "--prompt", "How many?",
                 "--max-new-tokens", "2"]) == 0
    assert "projector has never been trained" in capsys.readouterr().err  # a bare name: random projector


@pytest.fixture(scope="module")
def deepspeed_runs(small_data, tmp_path_factory):
    """Stage 1, 2 CPU processes over gloo: DDP, ZeRO-2, ZeRO-3 and ZeRO-3 offload with the same data and seed, none
    of them clipping (LLaVA's zero3_offload.json alone would clip, at 1.0: told not to here); ZeRO-3 also stopped at
    step 2 and resumed from its sharded checkpoint."""
    pytest.importorskip("deepspeed")
    tmp = tmp_path_factory.mktemp("ds")
    common = dict(data=small_data["captions"], image_folder=small_data["image_folder"], max_steps=4, num_processes=2,
                  batch_size=8, log_every=0)
    runs = {m: train("tiny-llava-1.5", 1, method=m, output_dir=tmp / m, **common)
            for m in ("ddp", "zero2", "zero3")}
    runs["zero3-offload"] = train("tiny-llava-1.5", 1, method="zero3-offload", output_dir=tmp / "zero3-offload",
                                  max_grad_norm=0.0, **common)
    runs["resumed"] = stopped_and_resumed("zero3", tmp / "cut", **common)
    return runs


def test_deepspeed_methods_really_run_deepspeed(deepspeed_runs):
    """On a CPU, Accelerate drops a DeepSpeed plugin silently when given cpu=True; train() must not."""
    assert deepspeed_runs["ddp"]["engine"] == "DistributedDataParallel"
    assert {deepspeed_runs[m]["engine"] for m in ("zero2", "zero3", "zero3-offload")} == {"DeepSpeedEngine"}


def test_zero2_and_zero3_compute_the_same_training(deepspeed_runs):
    """Sharding changes where the numbers live, not the numbers: the same losses (fp32) as each other and as DDP,
    none clipping (LLaVA's zero2/zero3 files: DeepSpeed's gradient_clipping 0). ZeRO-3's gathered final weights load
    into a plain model."""
    z2, z3, off, ddp = (deepspeed_runs[m]["losses"] for m in ("zero2", "zero3", "zero3-offload", "ddp"))
    assert {m: deepspeed_runs[m]["gradient_clipping"] for m in ("ddp", "zero2", "zero3", "zero3-offload")} == {
        "ddp": 0.0, "zero2": 0.0, "zero3": 0.0, "zero3-offload": 0.0}
    assert deepspeed_runs["zero3"]["deepspeed_config"]["zero_optimization"]["stage"] == 3
    assert deepspeed_runs["ddp"]["deepspeed_config"] is None
    assert len(z3) == 4 and z3 == pytest.approx(z2, abs=1e-5) and off == pytest.approx(z3, abs=1e-5)
    assert ddp == pytest.approx(z2, abs=1e-5)
    assert_same_weights(deepspeed_runs["zero2"]["final_dir"], deepspeed_runs["zero3"]["final_dir"], atol=1e-5)


def test_zero3_resumes_from_its_sharded_checkpoint_with_the_same_losses(deepspeed_runs):
    assert deepspeed_runs["resumed"]["losses"] == pytest.approx(deepspeed_runs["zero3"]["losses"], abs=1e-6)


def test_zero3_checkpoint_consolidates_into_the_trained_model(deepspeed_runs, tmp_path):
    """DeepSpeed's zero_to_fp32 logic on the last sharded checkpoint gives exactly the weights train() saved."""
    from llava_nb.training.checkpoints import consolidate_zero_checkpoint

    run = deepspeed_runs["resumed"]
    out = consolidate_zero_checkpoint(run["last_checkpoint"], run["final_dir"], tmp_path / "consolidated")
    assert_same_weights(out, run["final_dir"])
    with pytest.raises(llava_nb.LlavaNbError, match="not a DeepSpeed checkpoint"):
        consolidate_zero_checkpoint(tmp_path, run["final_dir"], tmp_path / "x")


@pytest.fixture(scope="module")
def fsdp_runs(small_data, tmp_path_factory):
    """Stage 1, 2 CPU processes over gloo: DDP and FSDP2 (Accelerate's plugin) with the same data and seed; FSDP
    also stopped at step 2 and resumed from its sharded (DCP) checkpoint."""
    tmp = tmp_path_factory.mktemp("fsdp")
    common = dict(data=small_data["captions"], image_folder=small_data["image_folder"], max_steps=4, num_processes=2,
                  batch_size=8, log_every=0, save_every=2)
    # the evaluation after training (from the saved model: the live one is sharded) runs too
    runs = {m: train("tiny-llava-1.5", 1, method=m, output_dir=tmp / m, eval_data=small_data["test"], eval_max=4,
                     **common) for m in ("ddp", "fsdp")}
    runs["resumed"] = stopped_and_resumed("fsdp", tmp / "cut", **common)
    return runs


def test_fsdp_really_shards_and_computes_what_ddp_computes(fsdp_runs):
    """On a CPU, Accelerate drops an FSDP plugin silently; train() must not (methods.force_fsdp_on_cpu)."""
    assert fsdp_runs["fsdp"]["engine"] == "FSDPLlavaForConditionalGeneration"
    assert fsdp_runs["fsdp"]["losses"] == pytest.approx(fsdp_runs["ddp"]["losses"], abs=1e-5)
    assert fsdp_runs["fsdp"]["eval_accuracy"] == fsdp_runs["ddp"]["eval_accuracy"]
    assert_same_weights(fsdp_runs["ddp"]["final_dir"], fsdp_runs["fsdp"]["final_dir"], atol=1e-5)
    config = json.loads((Path(fsdp_runs["fsdp"]["final_dir"]) / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]  # not FSDP's wrapper class


def test_fsdp_resumes_from_its_dcp_checkpoint_with_the_same_losses(fsdp_runs):
    assert fsdp_runs["resumed"]["losses"] == pytest.approx(fsdp_runs["fsdp"]["losses"], abs=1e-6)
    shards = sorted(p.name for p in (Path(fsdp_runs["resumed"]["last_checkpoint"]) / "pytorch_model_fsdp_0").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file per rank


def test_fsdp_checkpoint_consolidates_into_the_trained_model(fsdp_runs, tmp_path):
    from llava_nb.training.checkpoints import consolidate_fsdp_checkpoint

    run = fsdp_runs["resumed"]
    out = consolidate_fsdp_checkpoint(run["last_checkpoint"], run["final_dir"], tmp_path / "consolidated")
    assert_same_weights(out, run["final_dir"])
    with pytest.raises(llava_nb.LlavaNbError, match="not an FSDP"):
        consolidate_fsdp_checkpoint(tmp_path, run["final_dir"], tmp_path / "x")
    with pytest.raises(llava_nb.LlavaNbError, match="does not match"):
        consolidate_fsdp_checkpoint(run["last_checkpoint"], "tiny-llava-v1", tmp_path / "y")


def test_lora_training_saves_an_adapter_that_reloads_onto_its_base_and_the_merged_model(small_data, tmp_path):
    s1 = train("tiny-llava-1.5", 1, data=small_data["captions"], image_folder=small_data["image_folder"],
               output_dir=tmp_path / "s1", max_steps=2, **FAST)
    r = train(s1["final_dir"], 2, method="lora", data=small_data["instruct"], image_folder=small_data["image_folder"],
              eval_data=small_data["test"], output_dir=tmp_path / "lora", max_steps=3, lora_r=8,
              lora_alpha=16, lr=2e-3, **FAST)
    assert r["engine"] == "PeftModel" and r["steps"] == 3 and 0 <= r["eval_accuracy"] <= 1  # one process: no DDP
    assert r["hyperparams"]["lora_r"] == 8
    assert r["attention"] == {"vision": "sdpa", "language": "sdpa"}  # TINY_LORA runs in fp32, where SDPA is faster
    merged, batch = assert_merged_equals_adapted(r, s1["final_dir"])
    with torch.no_grad():
        # training changed the model: the projector (trained in full) and the adapters
        base = llava_nb.load_model(s1["final_dir"]).eval()
        assert not torch.allclose(base(**batch).logits, merged(**batch).logits, atol=1e-4)


def test_a_bf16_lora_run_evaluates_its_merged_model(small_data, tmp_path):
    """LLaVA's recipe (bf16) on one process: LoRA merges into the live model, whose base is bf16 and whose projector
    keeps fp32 weights; its held-out evaluation runs under the training's autocast (a plain forward failed there:
    "expected m1 and m2 to have the same dtype", first seen on a GPU with a 7B stand-in)."""
    s1 = train("tiny-llava-1.5", 1, data=small_data["captions"], image_folder=small_data["image_folder"],
               output_dir=tmp_path / "s1", max_steps=2, **FAST)
    r = train(s1["final_dir"], 2, method="lora", data=small_data["instruct"], image_folder=small_data["image_folder"],
              eval_data=small_data["test"], output_dir=tmp_path / "lora", max_steps=2, lora_r=8, lora_alpha=16,
              mixed_precision="bf16", **FAST)
    assert r["states"]["frozen"] == "bfloat16" and r["states"]["weights"] == "float32"
    assert 0 <= r["eval_accuracy"] <= 1 and r["eval_examples"]


def test_qlora_trains_on_a_4bit_base_and_merges_into_the_full_precision_one(small_data, tmp_path):
    """bitsandbytes NF4 on CPU, 2 processes: the LLM's Linears are Linear4bit while training; the adapter (with the
    projector) then loads onto the full-precision stage-1 base, and the saved final model is that merge."""
    pytest.importorskip("bitsandbytes")
    s1 = train("tiny-llava-1.5", 1, data=small_data["captions"], image_folder=small_data["image_folder"],
               output_dir=tmp_path / "s1", max_steps=2, **FAST)
    r = train(s1["final_dir"], 2, method="qlora", data=small_data["instruct"], image_folder=small_data["image_folder"],
              eval_data=small_data["test"], output_dir=tmp_path / "qlora", max_steps=3, lora_r=8, lora_alpha=16,
              lr=2e-3, **{**FAST, "num_processes": 2})
    assert r["engine"] == "DistributedDataParallel" and r["steps"] == 3
    assert r["quantized_linears"] == 4 * 7  # every Linear of the 4 LLM blocks; not the projector, ViT or lm_head
    assert_merged_equals_adapted(r, s1["final_dir"])


@pytest.mark.parametrize("method,processes", [("ddp", 1), ("zero2", 2), ("fsdp", 2)])
def test_max_grad_norm_clips_before_the_step(small_data, tmp_path, method, processes):
    """With the gradient clipped to a norm far below AdamW's eps (1e-8), each update is about lr * g / eps instead
    of about lr: the projector barely moves. Without clipping it moves by about lr per weight. Under DeepSpeed the
    setting must reach the engine's own gradient_clipping (Accelerate's clip_grad_norm_ does nothing there); under
    FSDP2 the clipped parameters must be the sharded ones prepare() made, not the model's originals."""
    if method in ("zero2",):
        pytest.importorskip("deepspeed")
    from llava_nb.training.pretrain import load_pretrained_parts

    start = llava_nb.build_model("tiny-llava-1.5", seed=0)
    load_pretrained_parts(start)
    w0 = start.model.multi_modal_projector.linear_1.weight
    moved = {}
    for clip in (None, 1e-12):
        r = train("tiny-llava-1.5", 1, method=method, data=small_data["captions"],
                  image_folder=small_data["image_folder"], output_dir=tmp_path / str(clip), max_steps=2,
                  max_grad_norm=clip, **{**FAST, "num_processes": processes})
        assert r["gradient_clipping"] == (clip or 0.0)  # LLaVA's zero2.json: no clipping
        w = llava_nb.load_model(tmp_path / str(clip) / "final").model.multi_modal_projector.linear_1.weight
        moved[clip] = (w - w0).abs().max().item()
    assert moved[None] > 1e-5 and moved[1e-12] < moved[None] / 100


@pytest.mark.parametrize("method,processes", [("ddp", 1), ("zero3+lora", 2)])
def test_mm_projector_lr_steps_the_projector_at_its_own_lr(small_data, tmp_path, method, processes):
    """Stage 2 twice from the same stage-1 model, the second with mm_projector_lr = lr / 100. The first step has lr
    0 (warm-up), so both runs take their second step from the same weights and Adam state: the LLM's update must be
    identical and the projector's exactly 100 times smaller, under torch DDP and under ZeRO-3 with LoRA (the
    projector is then peft's trainable copy), as in LLaVA's finetune_lora.sh."""
    if method != "ddp":
        pytest.importorskip("deepspeed")
    s1 = train("tiny-llava-1.5", 1, data=small_data["captions"], image_folder=small_data["image_folder"],
               output_dir=tmp_path / "s1", max_steps=2, **FAST)
    before = llava_nb.load_model(s1["final_dir"]).state_dict()
    moved = {}
    for projector_lr in (None, 1e-5):
        r = train(s1["final_dir"], 2, method=method, data=small_data["instruct"],
                  image_folder=small_data["image_folder"], output_dir=tmp_path / str(projector_lr), max_steps=2,
                  lr=1e-3, mm_projector_lr=projector_lr, lora_r=8, lora_alpha=16,
                  **{**FAST, "num_processes": processes})
        assert r["hyperparams"]["mm_projector_lr"] == projector_lr
        after = llava_nb.load_model(r["final_dir"]).state_dict()
        moved[projector_lr] = {k: after[k] - before[k] for k in before if not torch.equal(after[k], before[k])}
    full, slow = moved[None], moved[1e-5]
    projector = [k for k in full if "multi_modal_projector" in k]
    assert projector and len(full) > len(projector) and full.keys() == slow.keys()
    for k in full:  # to within the rounding of an fp32 weight (about 1e-8) on updates of about 1e-5 and 1e-3
        expected = full[k] / 100 if k in projector else full[k]
        assert (slow[k] - expected).norm() <= 1e-2 * expected.norm(), k


def _run_at_once(target, *args) -> list[int]:
    """Run ``target(barrier, *args)`` in two forked processes (as an accelerate launch's two ranks); ``target``
    waits at the barrier so that both start together. Returns their exit codes."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=target, args=(barrier, *args)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs]


def _prepare_data(barrier, cache_dir):
    train_module = importlib.import_module("llava_nb.training.api")  # the module (llava_nb.training.api is also the function)
    train_module.CACHE_DIR = cache_dir
    barrier.wait()  # both processes start generating at once
    train_module.synthetic_data("tiny-llava-1.5", n_images=60, n_test=12)


def test_ranks_preparing_the_same_synthetic_data_take_turns(tmp_path, monkeypatch):
    """The ranks of `accelerate launch -m llava_nb train` each call synthetic_data(); without the folder lock one
    rank's clean-up deleted images the other had written, and the workers failed with "missing image file"."""
    from llava_nb.data.records import load_conversations
    from llava_nb.training.api import synthetic_data

    assert _run_at_once(_prepare_data, tmp_path) == [0, 0]
    monkeypatch.setattr(importlib.import_module("llava_nb.training.api"), "CACHE_DIR", tmp_path)
    data = synthetic_data("tiny-llava-1.5", n_images=60, n_test=12)  # ready: nothing is generated again
    for key, n in (("captions", 60), ("instruct", 60), ("test", 12)):
        assert len(load_conversations(data[key], data["image_folder"])) == n  # raises on any missing image


def test_pretraining_in_a_child_keeps_the_process_fork_clean(tmp_path):
    """A part trains in a child process: the caller never imports bitsandbytes (through transformers.optimization
    and peft), after which notebook_launcher refuses to fork; and the child trains what the caller would have."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from llava_nb.training.tiny_vit import pretrain_vision

    code = ("import sys; from llava_nb.training.pretrain import _train_in_child; "
            f"_train_in_child('pretrain_vision', out_dir={str(tmp_path / 'child')!r}, steps=3, batch_size=8); "
            "print(sorted(m for m in ('bitsandbytes', 'peft', 'transformers.optimization') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    pretrain_vision(out_dir=tmp_path / "here", steps=3, batch_size=8)
    child, here = (load_file(tmp_path / d / "model.safetensors") for d in ("child", "here"))
    assert child.keys() == here.keys()
    # the same seed, data and steps: the same weights (to rounding: the child runs with torch's default thread
    # count, which this process may have changed)
    assert all(torch.allclose(child[k], here[k], atol=1e-5) for k in child)
    from llava_nb.training.pretrain import _train_in_child

    with pytest.raises(RuntimeError, match=r"(?s)pretrain_vision\(\) failed in its child process:.*no_such_argument"):
        _train_in_child("pretrain_vision", no_such_argument=1)


def _prepare_parts(barrier, folder, calls):
    pretrain = importlib.import_module("llava_nb.training.pretrain")
    pretrain.PRETRAINED_DIR, pretrain.VISION_DIR, pretrain.LANGUAGE_DIR = folder, folder / "vit", folder / "llm"

    def fake_training(function, out_dir):  # slow enough for the other process to arrive while it runs
        with open(calls, "a") as f:
            f.write(function + "\n")
        time.sleep(0.5)
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "model.safetensors").write_text(function)

    pretrain._train_in_child = fake_training
    barrier.wait()
    pretrain.ensure_pretrained_parts()


def test_ranks_needing_the_pretrained_parts_train_each_once(tmp_path):
    """Two processes (an accelerate launch's ranks) find the parts missing at once: one trains each part, the other
    waits for it, and each part appears whole in its folder."""
    calls = tmp_path / "calls.txt"
    assert _run_at_once(_prepare_parts, tmp_path / "parts", calls) == [0, 0]
    assert sorted(calls.read_text().split()) == ["pretrain_language", "pretrain_vision"]
    assert (tmp_path / "parts" / "vit" / "model.safetensors").read_text() == "pretrain_vision"
    assert not list((tmp_path / "parts").glob("*.tmp"))


@pytest.mark.parametrize("fast_bf16, asked, want", [(True, None, "bf16"), (False, None, "no"), (False, "bf16", "bf16")])
def test_the_tiny_recipe_trains_in_fp32_on_a_cpu_without_bf16_instructions(monkeypatch, capsys, fast_bf16, asked,
                                                                              want):
    from llava_nb.methods.registry import get_method
    from llava_nb.training import api

    monkeypatch.setattr(api, "cpu_has_fast_bf16", lambda: fast_bf16)
    monkeypatch.setattr(api, "_told_fp32", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = {} if asked is None else {"mixed_precision": asked}
    cfg = api._config(None, dict(settings), True, 2, get_method("ddp").for_stage(2))
    assert cfg.mixed_precision == want
    assert ("no bf16 instructions" in capsys.readouterr().out) == (want == "no")
    real = api._config(None, {}, False, 2, get_method("zero3").for_stage(2))  # a real checkpoint's recipe: as LLaVA's
    assert real.mixed_precision == "bf16"


def test_cpu_bf16_check_agrees_with_the_cpu_flags():
    """torch's check (oneDNN's bf16 path) against /proc/cpuinfo: AVX-512 BW/VL/DQ or AMX on x86 means yes, a CPU with
    neither means no (the AVX2-only case where bf16 autocast was measured 8-10x slower than fp32)."""
    from llava_nb.training.launch import cpu_has_fast_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or "flags" not in cpuinfo.read_text():
        pytest.skip("no x86 /proc/cpuinfo here")
    flags = set(next(x for x in cpuinfo.read_text().splitlines() if x.startswith("flags")).split(":")[1].split())
    if {"avx512bw", "avx512vl", "avx512dq"} <= flags or "amx_bf16" in flags:
        assert cpu_has_fast_bf16()
    elif not any(f.startswith(("avx512", "amx", "avx_ne_convert")) for f in flags):
        assert not cpu_has_fast_bf16()
    else:
        pytest.skip("a partial AVX-512 set, or AVX-NE-CONVERT (bf16 conversions without AVX-512): oneDNN decides")

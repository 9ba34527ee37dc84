"""One registry of training methods: names compose, and what the calculator counts is what train() builds.

For every method, a real ``train()`` on the tiny LLaVA (2 CPU processes, from a stage-1 checkpoint folder, so that
ZeRO-3 loads under ``zero.Init`` as a real checkpoint does) reports the parameters it trains and the dtype of each
training state read from the live engine (``methods.probe``); ``estimate_memory`` must count the same.
"""

import pytest

from llava_nb import UnknownMethodError, estimate_memory
from llava_nb.methods.registry import ENGINES, METHODS, get_method

MODEL = "tiny-llava-1.5"


def test_names_compose_and_read_back():
    assert get_method("zero3+lora") == get_method("zero3", adapter="lora")
    assert get_method("lora") == get_method("ddp", adapter="lora") == get_method("ddp+lora")
    assert get_method("lora").name == "lora" and get_method("fsdp", adapter="lora").name == "fsdp+lora"
    for name in METHODS:
        method = get_method(name)
        assert get_method(method.key).for_stage(method.stage) == method
    assert get_method("stage1").trains == "projector" and get_method("zero3").trains == "llm"
    assert get_method("qlora").trains == "adapters" and get_method("qlora").adapter.quantized
    assert {get_method(m).engine.name for m in METHODS} == set(ENGINES)


@pytest.mark.parametrize("bad, fix", [("zero4", "engines: ddp"), ("zero3+dora", "adapter"),
                                      ("zero3+qlora", r"use fsdp\+qlora .* or qlora"), ("lora", "already names")])
def test_bad_names_say_what_to_do(bad, fix):
    with pytest.raises(UnknownMethodError, match=fix):
        get_method(bad, adapter="qlora" if bad == "lora" else None)


def test_adapters_have_nothing_to_train_in_stage_1():
    with pytest.raises(UnknownMethodError, match="stage 1 does not train"):
        get_method("zero3+lora").for_stage(1)


#: every method trained once on the tiny LLaVA, 2 processes, from a stage-1 checkpoint; one line of JSON per method
RUN_ALL = """
import json, sys
from llava_nb.methods.registry import METHODS, get_method
from llava_nb.training.api import synthetic_data, train

out = sys.argv[1]
data = synthetic_data("tiny-llava-1.5", n_images=96, n_test=8)
stage1 = train("tiny-llava-1.5", 1, data=data["captions"], image_folder=data["image_folder"], max_steps=1,
               batch_size=8, log_every=0, output_dir=f"{out}/prior")
for name in METHODS:
    method = get_method(name)
    run = train("tiny-llava-1.5" if method.stage == 1 else stage1["final_dir"], method.stage, method=method.key,
                data=data["instruct"], image_folder=data["image_folder"], stop_after=1, batch_size=8, log_every=0,
                lora_r=16, mixed_precision="bf16", output_dir=f"{out}/{name}")
    print(json.dumps({"name": name, "trainable": run["trainable_parameters"], "states": run["states"],
                      "launcher": run["launcher"], "bitsandbytes here": "bitsandbytes" in sys.modules}), flush=True)
import peft  # imports bitsandbytes: from now on accelerate's notebook_launcher refuses to fork
run = train(stage1["final_dir"], 2, data=data["instruct"], image_folder=data["image_folder"], stop_after=1,
            batch_size=8, log_every=0, output_dir=f"{out}/after-peft")
print(json.dumps({"name": "after import peft", "launcher": run["launcher"]}), flush=True)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """What train() built for every method. The runs share one fresh Python process, which can fork its workers
    (this one cannot once another test has imported bitsandbytes, and fresh worker processes cost seconds each)."""
    import json
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("methods")
    proc = subprocess.run([sys.executable, "-c", RUN_ALL, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"name"')]
    return {r["name"]: r for r in lines}


def test_every_method_forks_through_notebook_launcher_until_peft_is_imported(trained):
    """Nothing train() does before its workers start imports bitsandbytes (peft, transformers.optimization), so a
    notebook keeps notebook_launcher for every method, QLoRA included; once the caller imports peft, accelerate
    refuses to fork and the workers start as fresh processes."""
    assert {trained[name]["launcher"] for name in METHODS} == {"notebook_launcher"}
    assert not any(trained[name]["bitsandbytes here"] for name in METHODS)
    assert trained["after import peft"]["launcher"] == "fresh processes"


@pytest.mark.parametrize("name", METHODS)
def test_the_calculator_counts_what_train_builds(name, trained):
    """Trainable parameters and the dtypes of weights, master weights, gradients, optimizer states and frozen
    weights: from a live train() on 2 processes, and from estimate_memory, for the same method and model."""
    run = trained[name]
    estimate = estimate_memory(MODEL, name, lora_r=16, seq_len=512)
    assert run["trainable"] == estimate.trainable
    assert run["states"] == estimate.states == get_method(name).states("bf16").as_dict()


@pytest.mark.parametrize("method", ["lora", "qlora", "ddp"])
@pytest.mark.filterwarnings("ignore")  # bitsandbytes' CPU kernels announce an optional package
def test_setup_leaves_no_input_require_grad_hooks_and_the_gradients_unchanged(method, tmp_path):
    """transformers' checkpointing and peft register hooks that make every input embedding's output require grad,
    the frozen ViT's patch embeddings included; setup_model removes them (non-reentrant checkpointing needs none).
    The trained parameters' gradients are the same as with the hooks, and the frozen ViT is no longer differentiated
    through: its patch embedding's output does not require grad."""
    import torch

    import llava_nb
    from llava_nb.lab.harness import synthetic_batch
    from llava_nb.methods.setup import load_kwargs, setup_model
    from llava_nb.models.params import model_parts

    def hooked(model):
        return sorted(name for name, m in model.named_modules()
                      for hook in m._forward_hooks.values() if "require_grad" in getattr(hook, "__name__", ""))

    def grads(model, batch):
        """The trained parameters' gradients, and whether the ViT's patch embeddings required grad (read by a hook
        registered after any other)."""
        seen = []
        handle = patch.register_forward_hook(lambda m, i, out: seen.append(out.requires_grad))
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        handle.remove()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, seen

    llava_nb.build_model(MODEL, seed=0).save_pretrained(tmp_path)  # loaded as train() loads it (4-bit for QLoRA)
    model = setup_model(llava_nb.load_model(tmp_path, **load_kwargs(method, "no")), get_method(method).for_stage(2),
                        gradient_checkpointing=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                        mixed_precision="no")
    assert hooked(model) == []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    batch = synthetic_batch(base.config, 2, 600, "cpu")
    patch = model_parts(base)["vision_tower"].get_input_embeddings()
    without, differentiated = grads(model, batch)
    base.enable_input_require_grads()  # what transformers and peft leave behind
    assert hooked(model)
    with_hooks, differentiated_with_hooks = grads(model, batch)
    assert differentiated == [False] and differentiated_with_hooks == [True]
    assert without.keys() == with_hooks.keys() and all(torch.allclose(without[n], with_hooks[n], atol=1e-6)
                                                       for n in without)

"""The memory calculator's Shapes and the parameter counts, computed from config numbers (no torch), against the
modules transformers builds on the meta device, for every known model; and the pure commands import no torch."""

import copy
import json
import math
import subprocess
import sys
from dataclasses import asdict

import pytest

import llava_nb
from llava_nb.memory.estimate import model_shapes
from llava_nb.methods.stages import freeze_for_stage
from llava_nb.models.architectures import get_config
from llava_nb.models.layout import parameter_owners
from llava_nb.methods.counts import count_parameters
from llava_nb.models.params import model_parts

#: the parameter-count vocabulary: stage 1, full fine-tuning, and the two adapters
METHODS = ("stage1", "full", "lora", "qlora")
from llava_nb.models.specs import KNOWN_MODELS, get_spec


@pytest.fixture(scope="module", params=KNOWN_MODELS)
def built(request):
    """(name, the model built on the meta device with the ViT frozen, as stage 2 trains it)."""
    return request.param, freeze_for_stage(llava_nb.build_model(request.param, device="meta"), "stage2")


def _shapes_from_module(model, lora_r: int = 128) -> dict:
    """Every Shapes field read off the module (independently of ``llava_nb.models.layout``)."""
    parts = model_parts(model)
    lm = parts["language_model"]
    text = model.config.text_config
    params = list(model.parameters())
    sizes = tuple((p.requires_grad, tuple(p.shape)) for p in params)
    return {
        "name": model.config.llava_nb_name,
        "total": sum(p.numel() for p in params),
        "vision": sum(p.numel() for p in parts["vision_tower"].parameters()),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "projector": sum(p.numel() for p in parts["projector"].parameters())
        + (parts["image_newline"].numel() if parts["image_newline"] is not None else 0),
        "embed": lm.embed_tokens.weight.numel(),
        "lm_head": parts["lm_head"].weight.numel(),
        "llm_linear": sum(m.weight.numel() for m in lm.modules() if type(m).__name__ == "Linear"),
        "adapter": count_parameters(model, "lora", lora_r=lora_r)["adapter"],
        "largest_layer": max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        "layers": text.num_hidden_layers, "hidden": text.hidden_size, "intermediate": text.intermediate_size,
        "heads": text.num_attention_heads, "kv_heads": text.num_key_value_heads,
        "head_dim": getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        "vocab": text.vocab_size, "lora_r": lora_r, "sizes": sizes,
        "persistent_small": sum(math.prod(s) for _, s in sizes if math.prod(s) < 10 * text.hidden_size),
        "parts": tuple(_part_of(name) for name, _ in model.named_parameters()),
        "adapter_sizes": tuple(shape for m in lm.modules() if type(m).__name__ == "Linear"
                               for shape in ((lora_r, m.in_features), (m.out_features, lora_r))),
        "llm_linear_sizes": tuple((False, tuple(m.weight.shape)) for m in lm.modules() if type(m).__name__ == "Linear"),
    }


def _part_of(name: str) -> str:
    """The LLaVA part a parameter's qualified name belongs to."""
    for key, part in (("vision_tower", "vision_tower"), ("multi_modal_projector", "projector"),
                      ("image_newline", "image_newline"), ("language_model", "language_model"),
                      ("lm_head", "lm_head")):
        if key in name:
            return part
    raise AssertionError(f"no part for {name}")


def test_shapes_equal_the_meta_model(built):
    name, model = built
    assert asdict(model_shapes(name)) == _shapes_from_module(model)
    assert asdict(model_shapes(name, lora_r=8)) == _shapes_from_module(model, lora_r=8)


def test_every_tensor_in_module_order(built):
    """The layout names each parameter as ``named_parameters()`` does, in the same order, with the same shape."""
    name, model = built
    ours = [(f"{o.path}.{n}", shape) for o in parameter_owners(name) for n, shape in o.params]
    assert ours == [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def test_spec_and_config_give_the_name_s_shapes(built):
    name, _ = built
    assert model_shapes(get_config(name)) == model_shapes(get_spec(name)) == model_shapes(name)


@pytest.mark.parametrize("method", METHODS)
def test_counts_from_numbers_equal_the_module_walk(built, method):
    name, model = built
    from_module = count_parameters(model, method, lora_r=16)
    assert count_parameters(name, method, lora_r=16) == from_module
    assert count_parameters(get_config(name), method, lora_r=16) == from_module
    if method == "lora":
        targets = ["q_proj", "v_proj"]
        assert count_parameters(name, method, lora_targets=targets) == count_parameters(model, method,
                                                                                      lora_targets=targets)


@pytest.mark.parametrize("change", ["tied", "gqa", "biases", "two_feature_layers"])
def test_configs_off_the_known_list(change):
    """Numbers no known model has: a tied lm_head, grouped-query attention on Llama, biased projections, two
    concatenated feature layers (the projector's input doubles)."""
    config = copy.deepcopy(get_config("tiny-llava-v1.6"))
    if change == "tied":
        config.tie_word_embeddings = True
    elif change == "gqa":
        config.text_config.num_key_value_heads = 2
    elif change == "biases":
        config.text_config.attention_bias = config.text_config.mlp_bias = True
    else:
        config.vision_feature_layer = [-2, -3]
    model = freeze_for_stage(llava_nb.build_model(config, device="meta"), "stage2")
    assert [(f"{o.path}.{n}", s) for o in parameter_owners(config) for n, s in o.params] == [
        (n, tuple(p.shape)) for n, p in model.named_parameters()]
    for method in METHODS:
        assert count_parameters(config, method, lora_r=4) == count_parameters(model, method, lora_r=4)
    expected = _shapes_from_module(model)
    if change == "tied":
        expected["lm_head"] = 0  # its weight is embed_tokens': counted once, in the LLM
    assert asdict(model_shapes(config)) == expected


def test_unknown_towers_are_refused():
    config = copy.deepcopy(get_config("tiny-llava-1.5"))
    config.text_config.model_type = "qwen2"
    with pytest.raises(llava_nb.UnknownModelError, match="Llama or Mistral"):
        model_shapes(config)
    with pytest.raises(llava_nb.UnknownModelError, match="ModelSpec"):
        count_parameters(3.5)


PURE = """
import sys, contextlib, io
import llava_nb
from llava_nb.cli import main
assert "torch" not in sys.modules and "transformers" not in sys.modules, "import llava_nb"
for argv in {}:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(list(argv)) == 0, argv
    heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    assert not heavy, (argv, heavy)
print("ok")
"""


def test_pure_commands_import_no_torch():
    """``import llava_nb`` and the arithmetic commands leave torch and transformers unimported (not a timing test)."""
    commands = [["tokens", "--model", "llava-v1.6-mistral-7b", "--size", "480x640"],
                ["tokens", "--model", "tiny-llava-v1", "--size", "30x40", "--json"],
                ["params", "--model", "llava-1.5-13b", "--method", "lora"],
                ["params", "--model", "tiny-llava-v1.6", "--json"],
                ["memory", "--model", "llava-v1.6-mistral-7b", "--method", "zero3", "--gpus", "4"],
                ["memory", "--model", "llava-1.5-7b", "--method", "zero2", "--accounting", "paper", "--json"]]
    code = PURE.format(json.dumps(commands))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

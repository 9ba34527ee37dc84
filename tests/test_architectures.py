import pytest
import torch

import llava_nb
from llava_nb.models.architectures import ALIASES, TINY_GRID_PINPOINTS, V16_GRID_PINPOINTS, LlavaV1ForConditionalGeneration

# From ../shared/reference/llava-facts.md (computed from the public architectures).
FACTS_TOTAL = {"llava-1.5-7b": 7_063_427_072, "llava-v1.6-mistral-7b": 7_566_747_648}


@pytest.mark.parametrize("name", llava_nb.KNOWN_MODELS)
def test_every_name_builds_on_meta(name):
    model = llava_nb.build_model(name, device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert model.config.llava_nb_name == name


@pytest.mark.parametrize("name,total", FACTS_TOTAL.items())
def test_totals_match_reference(name, total):
    assert sum(p.numel() for p in llava_nb.build_model(name, device="meta").parameters()) == total


@pytest.mark.parametrize("alias,name", ALIASES.items())
def test_aliases_resolve_case_insensitively(alias, name):
    assert llava_nb.resolve_name(alias) == name
    assert llava_nb.resolve_name(alias.upper()) == name
    assert llava_nb.get_config(alias).llava_nb_name == name


def test_unknown_name_lists_known_names():
    with pytest.raises(llava_nb.UnknownModelError) as err:
        llava_nb.get_config("llava-2-7b")
    assert isinstance(err.value, ValueError)
    for name in llava_nb.KNOWN_MODELS:
        assert name in str(err.value)


@pytest.mark.parametrize("full,tiny", [("llava-v1-7b", "tiny-llava-v1"), ("llava-1.5-7b", "tiny-llava-1.5"),
                                       ("llava-v1.6-mistral-7b", "tiny-llava-v1.6")])
def test_tiny_models_keep_structural_features(full, tiny):
    f, t = llava_nb.get_config(full), llava_nb.get_config(tiny)
    assert type(f) is type(t)
    assert t.mm_projector_type == f.mm_projector_type
    assert t.vision_feature_layer == f.vision_feature_layer == -2
    assert t.vision_feature_select_strategy == f.vision_feature_select_strategy == "default"
    assert t.vision_config.patch_size == f.vision_config.patch_size == 14
    # same resolution ratio between versions (224:336 = 56:84), scaled by the same factor
    assert f.vision_config.image_size / t.vision_config.image_size == 4
    fm, tm = llava_nb.build_model(full, device="meta"), llava_nb.build_model(tiny, device="meta")
    assert type(fm.model.multi_modal_projector) is type(tm.model.multi_modal_projector)
    assert hasattr(fm.model, "image_newline") == hasattr(tm.model, "image_newline")


def test_v1_has_single_linear_projector():
    model = llava_nb.build_model("llava-v1-7b", device="meta")
    assert isinstance(model, LlavaV1ForConditionalGeneration)
    linears = [m for m in model.model.multi_modal_projector.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and (linears[0].in_features, linears[0].out_features) == (1024, 4096)
    assert model.config.vision_config.image_size == 224


def test_tiny_pinpoints_are_scaled_real_pinpoints():
    assert tuple((4 * h, 4 * w) for h, w in TINY_GRID_PINPOINTS) == V16_GRID_PINPOINTS
    assert llava_nb.get_config("tiny-llava-v1.6").image_grid_pinpoints == [list(p) for p in TINY_GRID_PINPOINTS]
    assert llava_nb.get_config("llava-v1.6-vicuna-7b").image_grid_pinpoints == [list(p) for p in V16_GRID_PINPOINTS]


def test_build_is_deterministic_per_seed():
    a = llava_nb.build_model("tiny-llava-1.5", seed=0).state_dict()
    b = llava_nb.build_model("tiny-llava-1.5", seed=0).state_dict()
    c = llava_nb.build_model("tiny-llava-1.5", seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_build_model_dtype():
    model = llava_nb.build_model("tiny-llava-1.5", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("name", ["tiny-llava-v1", "tiny-llava-1.5", "tiny-llava-v1.6"])
def test_load_model_round_trip_from_local_checkpoint(name, tmp_path):
    model = llava_nb.build_model(name, seed=3).eval()
    processor = llava_nb.build_processor(name)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = llava_nb.load_model(tmp_path).eval()
    assert type(loaded) is type(model)
    reloaded_proc = llava_nb.load_processor(tmp_path)
    image = llava_nb.sample_image("coffee")
    batch = reloaded_proc(images=image, text="USER: <image>\nWhat is this? ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_load_model_dtype(tmp_path):
    llava_nb.build_model("tiny-llava-1.5").save_pretrained(tmp_path)
    loaded = llava_nb.load_model(str(tmp_path), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_load_model_errors(tmp_path):
    with pytest.raises(llava_nb.UnknownModelError, match="Known names"):
        llava_nb.load_model("no-such-model")
    with pytest.raises(llava_nb.UnknownModelError, match="build_model"):
        llava_nb.load_model("tiny-llava-1.5")
    with pytest.raises(llava_nb.UnknownModelError, match="config.json"):
        llava_nb.load_model(tmp_path)


@pytest.mark.parametrize("name,hub", [("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf"),
                                      ("liuhaotian/llava-v1.5-13b", "llava-hf/llava-1.5-13b-hf"),
                                      ("LLAVA-HF/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-mistral-7b-hf")])
def test_load_model_resolves_names_to_hub_checkpoints_safely(name, hub, monkeypatch):
    """Without network we cannot download; check what load_model asks from_pretrained for (the Hub's id: a
    reader's LLAVA_NB_CHECKPOINTS, which would turn it into a local folder, is unset here)."""
    monkeypatch.delenv("LLAVA_NB_CHECKPOINTS", raising=False)
    calls = []

    def fake_from_pretrained(cls, source, **kwargs):
        calls.append((cls.__name__, source, kwargs))
        return "loaded"

    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    for cls in (LlavaForConditionalGeneration, LlavaNextForConditionalGeneration):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(fake_from_pretrained))
    assert llava_nb.load_model(name, dtype=torch.bfloat16) == "loaded"
    (cls_name, source, kwargs), = calls
    assert source == hub
    assert kwargs["use_safetensors"] is True and kwargs["trust_remote_code"] is False
    assert kwargs["dtype"] == torch.bfloat16
    assert cls_name == ("LlavaNextForConditionalGeneration" if "v1.6" in hub else "LlavaForConditionalGeneration")


def test_committed_vit_patch_features_say_where_they_are():
    """The LLM can only answer "is there a shape at the top left?" if each patch token carries its position."""
    from transformers import CLIPVisionModel

    from llava_nb.models.architectures import clip_config
    from llava_nb.models.specs import tiny_vit
    from llava_nb.training.tiny_vit import position_probe

    trained = position_probe(n_images=300)
    assert trained["own_quadrant"] > 0.95 and trained["occupied"] > 0.95
    torch.manual_seed(0)
    untrained = position_probe(CLIPVisionModel(clip_config(tiny_vit(84))), n_images=300)
    assert untrained["own_quadrant"] < 0.8  # CLIP's small random position embeddings: the signature is weak

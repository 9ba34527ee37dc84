import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution

import llava_nb
from llava_nb.models.architectures import V16_GRID_PINPOINTS

# 50+ sizes (height, width): common photos, extreme aspect ratios, tiny images, primes, pinpoint edges.
SIZES = [
    (480, 640), (640, 480), (336, 336), (1000, 1000), (720, 1280), (1280, 720), (1080, 1920), (1920, 1080),
    (768, 1024), (1024, 768), (600, 400), (400, 600), (224, 224), (512, 512), (2048, 2048), (3000, 4000),
    (1, 1), (2, 3), (3, 2), (5, 7), (14, 14), (13, 29), (28, 28), (50, 50), (100, 37), (37, 100),
    (1, 1000), (1000, 1), (10, 2000), (2000, 10), (50, 2000), (2000, 50), (336, 1008), (1008, 336),
    (336, 672), (672, 336), (672, 672), (335, 671), (337, 673), (999, 333), (333, 999), (700, 300),
    (300, 700), (101, 997), (997, 101), (479, 641), (641, 479), (250, 1500), (1500, 250), (810, 1440),
    (1440, 810), (96, 128), (128, 96), (2, 1000), (1000, 2), (4032, 3024), (3024, 4032),
]


def _image(h, w, seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8))


def _n_image_tokens(processor, image):
    enc = processor(images=image, text="USER: <image>\nDescribe. ASSISTANT:", return_tensors="pt")
    return int((enc["input_ids"] == processor.tokenizer.image_token_id).sum()), enc


def test_reference_examples():
    # ../shared/reference/llava-facts.md
    expected = {(480, 640): 2340, (640, 480): 2352, (336, 336): 1176, (1000, 1000): 2928}
    for (h, w), n in expected.items():
        assert llava_nb.count_image_tokens("llava-v1.6-mistral-7b", h, w) == n
    assert llava_nb.count_image_tokens("llava-1.5-7b", 480, 640) == 576
    assert llava_nb.count_image_tokens("llava-v1-7b", 480, 640) == 256


def test_sizes_are_many_and_varied():
    assert len(set(SIZES)) >= 50
    assert max(max(h / w, w / h) for h, w in SIZES) >= 500  # extreme aspect ratios
    assert min(h * w for h, w in SIZES) == 1  # tiny images


@pytest.mark.parametrize("name", ["llava-v1.6-mistral-7b", "llava-v1.6-vicuna-7b"])
def test_matches_llava_next_processor(name):
    processor = llava_nb.build_processor(name)
    cfg = llava_nb.get_config(name)
    for h, w in SIZES:
        n, enc = _n_image_tokens(processor, _image(h, w))
        assert n == llava_nb.count_image_tokens(cfg, h, w), (h, w)
        assert enc["pixel_values"].shape[1] == llava_nb.anyres_layout(cfg, h, w).num_tiles + 1, (h, w)


@pytest.mark.parametrize("name", ["llava-v1-7b", "llava-1.5-7b", "llava-1.5-13b", "tiny-llava-v1", "tiny-llava-1.5"])
def test_matches_llava_processor(name):
    processor = llava_nb.build_processor(name)
    cfg = llava_nb.get_config(name)
    for h, w in SIZES[::3]:
        n, _ = _n_image_tokens(processor, _image(h, w))
        assert n == llava_nb.count_image_tokens(cfg, h, w), (h, w)


def test_matches_transformers_formula_on_a_dense_grid():
    processor = llava_nb.build_processor("llava-v1.6-mistral-7b")
    cfg = llava_nb.get_config("llava-v1.6-mistral-7b")
    for h, w in itertools.product(range(1, 2200, 37), range(1, 2200, 41)):
        ours = llava_nb.count_image_tokens(cfg, h, w)
        # the processor subtracts the dropped CLS after _get_number_of_features (strategy "default")
        assert ours == processor._get_number_of_features(h, w, 336, 336) - 1, (h, w)


def test_select_best_resolution_matches_transformers():
    for h, w in itertools.product(range(1, 2000, 53), range(1, 2000, 59)):
        assert tuple(llava_nb.select_best_resolution(h, w, V16_GRID_PINPOINTS)) == tuple(
            hf_select_best_resolution((h, w), V16_GRID_PINPOINTS)), (h, w)


def test_tiny_models_produce_exactly_that_many_features():
    """The model itself (not only the processor) agrees: transformers raises on any mismatch."""
    for name in ["tiny-llava-v1", "tiny-llava-1.5", "tiny-llava-v1.6"]:
        model = llava_nb.build_model(name).eval()
        processor = llava_nb.build_processor(name)
        for h, w in SIZES[::2]:
            n, enc = _n_image_tokens(processor, _image(h, w))
            with torch.no_grad():
                steps, _ = llava_nb.trace_forward(model, enc["input_ids"], enc["pixel_values"], enc.get("image_sizes"))
                model(**enc)  # raises "Image features and image tokens do not match" on disagreement
            shape = [s.shape for s in steps if s.name in ("projector", "anyres packing")][-1]
            features = shape[0] if len(shape) == 2 else shape[0] * shape[1]
            assert features == n == llava_nb.count_image_tokens(name, h, w), (name, h, w)


@pytest.mark.parametrize("h,w", [(0, 10), (10, 0), (-5, 5), (2.5, 3), (True, 4), ("10", 4), (None, 3)])
def test_bad_sizes_are_refused(h, w):
    with pytest.raises(llava_nb.InvalidSizeError):
        llava_nb.count_image_tokens("llava-1.5-7b", h, w)


@pytest.mark.parametrize("text", ["480", "480x", "x640", "axb", "480x640x3", "0x640", "-4x5"])
def test_parse_size_refuses_malformed(text):
    from llava_nb.models.image_tokens import parse_size

    with pytest.raises(llava_nb.InvalidSizeError, match="HEIGHTxWIDTH|positive"):
        parse_size(text)


def test_parse_size():
    from llava_nb.models.image_tokens import parse_size

    assert parse_size("480x640") == (480, 640)
    assert parse_size("480X640") == (480, 640)


def test_anyres_layout_refuses_non_anyres_models():
    with pytest.raises(llava_nb.ImageTokenMismatchError, match="v1.6"):
        llava_nb.anyres_layout("llava-1.5-7b", 100, 100)


def test_check_image_tokens_names_the_cause():
    cfg = llava_nb.get_config("llava-1.5-7b")
    image_id = cfg.image_token_id
    ok = [1] + [image_id] * 576 + [5, 6]
    llava_nb.check_image_tokens(cfg, ok, [(480, 640)])
    with pytest.raises(llava_nb.ImageTokenMismatchError, match="num_additional_image_tokens=1"):
        llava_nb.check_image_tokens(cfg, [1] + [image_id] * 575, [(480, 640)])
    with pytest.raises(llava_nb.ImageTokenMismatchError, match="truncated"):
        llava_nb.check_image_tokens(cfg, [1] + [image_id] * 300, [(480, 640)])
    with pytest.raises(llava_nb.ImageTokenMismatchError, match="more <image>"):
        llava_nb.check_image_tokens(cfg, [image_id] * 1152, [(480, 640)])
    v16 = llava_nb.get_config("llava-v1.6-mistral-7b")
    with pytest.raises(llava_nb.ImageTokenMismatchError, match="truncated"):
        llava_nb.check_image_tokens(v16, torch.full((1, 2000), v16.image_token_id), [(480, 640)])


def test_default_num_additional_image_tokens_is_the_575_trap():
    wrong = llava_nb.build_processor("llava-1.5-7b", num_additional_image_tokens=0)
    n, _ = _n_image_tokens(wrong, _image(336, 336))
    assert n == 575
    model = llava_nb.build_model("tiny-llava-1.5").eval()
    wrong_tiny = llava_nb.build_processor("tiny-llava-1.5", num_additional_image_tokens=0)
    _, enc = _n_image_tokens(wrong_tiny, _image(84, 84))
    with pytest.raises(ValueError, match="do not match"):
        with torch.no_grad():
            model(**enc)

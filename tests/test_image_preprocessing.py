"""What the package's image processors do to a photo, checked against LLaVA's own preprocessing.

LLaVA-1.5 (haotian-liu/LLaVA@c121f04) pads a non-square image to a square with CLIP's mean colour and then runs
CLIP's image processor: ``expand2square`` and ``process_images`` (llava/mm_utils.py:152-182), the same code inline
in training (llava/train/train.py:702-715) when ``--image_aspect_ratio pad`` (scripts/v1_5/finetune.sh:15).
The llava-hf checkpoints' processors are ``CLIPImageProcessor``: shortest edge to 336, centre crop, no padding.
"""

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil

import llava_nb
from llava_nb.models.processors import CLIP_MEAN, CLIP_STD, build_image_processor, build_processor, load_processor

PADDED = ["tiny-llava-1.5", "llava-1.5-7b", "llava-1.5-13b"]
#: (width, height): wide, tall, odd differences (the pad is split unevenly), and square
SIZES = [(512, 300), (300, 512), (513, 200), (97, 331), (512, 512)]


def expand2square(pil_img, background_color):
    """haotian-liu/LLaVA@c121f04 llava/mm_utils.py:152-163, unchanged."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def llava_pixels(image, side):
    """LLaVA-1.5's preprocessing (mm_utils.py:169-172): pad with the mean colour, then CLIP's processor.

    The CLIP processor is openai/clip-vit-large-patch14-336's: shortest edge to ``side``, centre crop, CLIP's
    normalisation (the llava-hf processors' settings, scaled to ``side``)."""
    clip = clip_processor(side)
    padded = expand2square(image, tuple(int(x * 255) for x in clip.image_mean))
    return clip(padded, return_tensors="np")["pixel_values"][0]


def clip_processor(side):
    return CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                 do_center_crop=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)


def photo(width, height):
    """The committed photograph resized to ``width`` x ``height`` (real content, not noise; stretched if not square)."""
    return llava_nb.sample_image("astronaut").resize((width, height), Image.BICUBIC)


@pytest.mark.parametrize("name", PADDED)
@pytest.mark.parametrize("size", SIZES)
def test_v15_processor_pads_like_llava(name, size):
    ip = build_image_processor(name)
    side = llava_nb.get_config(name).vision_config.image_size
    image = photo(*size)
    ours = ip(image, return_tensors="np")["pixel_values"][0]
    assert ours.shape == (3, side, side)
    np.testing.assert_array_equal(ours, llava_pixels(image, side))


def test_padding_colour_is_llava_mean_and_nearly_zero_after_normalising():
    assert tuple(int(x * 255) for x in CLIP_MEAN) == (122, 116, 104)  # LLaVA's background_color (mm_utils.py:171)
    ip = build_image_processor("tiny-llava-1.5")
    side = ip.crop_size["height"]
    wide = photo(side * 2, side // 2)  # content in the middle quarter of rows, padding above and below
    pixels = ip(wide, return_tensors="np")["pixel_values"][0]
    band = side // 4 - 1  # rows that are padding only (resampling blurs one row at the seam)
    top, bottom = pixels[:, :band], pixels[:, -band:]
    assert np.abs(top).max() < 0.02 and np.abs(bottom).max() < 0.02  # (int(255 m) / 255 - m) / s, per channel


def test_wide_photo_keeps_its_edges_padded_but_loses_them_cropped():
    side = 84
    wide = photo(2 * side, side)
    padded = build_image_processor("tiny-llava-1.5")(wide, return_tensors="np")["pixel_values"][0]
    cropped = clip_processor(side)(wide, return_tensors="np")["pixel_values"][0]  # llava-hf's processor, scaled
    # cropped: the middle half of the width fills the whole input; padded: the whole width in the middle rows
    assert not np.allclose(padded, cropped)
    band = side // 4 - 3  # the top rows: padding only once padded (bicubic resampling rings a few rows at the seam)
    assert np.abs(cropped[:, :band]).max() > 0.1  # cropped: picture content fills the top rows
    assert np.abs(padded[:, :band]).max() < 0.02


def test_v1_crops_and_v16_is_anyres():
    v1 = build_image_processor("tiny-llava-v1")
    assert type(v1).__name__ == "CLIPImageProcessorPil" and not getattr(v1, "do_pad", None) and v1.do_center_crop
    image = photo(300, 120)
    np.testing.assert_array_equal(v1(image, return_tensors="np")["pixel_values"][0],
                                  clip_processor(v1.crop_size["height"])(image, return_tensors="np")["pixel_values"][0])
    assert type(build_image_processor("tiny-llava-v1.6")).__name__ == "LlavaNextImageProcessorPil"


def test_saved_processor_keeps_padding(tmp_path):
    """A processor saved with a checkpoint (as train() and make-checkpoint save it) pads again when reloaded."""
    build_processor("tiny-llava-1.5").save_pretrained(tmp_path)
    reloaded = load_processor(tmp_path).image_processor
    assert reloaded.do_pad
    image = photo(200, 90)
    np.testing.assert_array_equal(reloaded(image, return_tensors="np")["pixel_values"][0], llava_pixels(image, 84))


def test_standin_processor_pads():
    from llava_nb.models.architectures import spec_to_config
    from llava_nb.models.specs import get_spec
    from llava_nb.models.standin import standin_processor

    config = spec_to_config(get_spec("llava-1.5-7b"))
    for key in ("llava_nb_name", "mm_projector_type"):  # as write_standin does: the real llava-hf config keys only
        delattr(config, key)
    ip = standin_processor(config).image_processor
    image = photo(400, 250)
    np.testing.assert_array_equal(ip(image, return_tensors="np")["pixel_values"][0], llava_pixels(image, 336))


def test_a_cropping_checkpoint_processor_is_made_to_pad_like_llava():
    """A llava-hf v1.5 checkpoint ships CLIP's cropping processor; ``load_processing`` trains it padded, as LLaVA-1.5's
    stage 2 and inference do (``padding_like_llava``). v1 keeps CLIP's crop."""
    from llava_nb.models.processors import padding_like_llava

    hf = clip_processor(336)  # llava-hf/llava-1.5-7b-hf's preprocessor_config.json settings
    image = photo(400, 250)
    padded = padding_like_llava(hf, "llava-1.5-7b")
    assert padded is not hf and padded.do_pad
    np.testing.assert_array_equal(padded(image, return_tensors="np")["pixel_values"][0], llava_pixels(image, 336))
    assert padding_like_llava(padded, "llava-1.5-7b") is padded
    assert padding_like_llava(hf, "tiny-llava-v1") is hf

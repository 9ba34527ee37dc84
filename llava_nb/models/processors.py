"""LLaVA processors built locally: CLIP image preprocessing + a tokenizer that expands ``<image>``.

A processor turns ``"<image>\\nWhat is this?"`` into as many ``<image>`` ids as the model will produce image
features. Two settings decide that count and are easy to get wrong:

* ``vision_feature_select_strategy="default"``: LLaVA drops CLIP's CLS feature;
* ``num_additional_image_tokens=1``: the ViT's sequence *has* a CLS token, which the processor subtracts again.
  transformers' default is 0, which at 336 px yields 575 tokens for 576 features, and the model fails with
  "Image features and image tokens do not match".

We use the PIL backends (``CLIPImageProcessorPil``, ``LlavaNextImageProcessorPil``): the default classes need
torchvision, which this book does not install, and warn before falling back to PIL.
"""

from __future__ import annotations

from transformers import (
    CLIPImageProcessorPil,
    LlavaImageProcessorPil,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
)

from .architectures import as_config
from .tokenizer import IMAGE_TOKEN, load_tokenizer

# OpenAI CLIP's normalisation constants (the image processors' defaults; stated so the config is explicit).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_image_processor(model):
    """The image processor of a model (name, config or module), configured as LLaVA trains it.

    v1: CLIP's resize + centre crop. v1.5: pad to a square with the mean colour first (``image_aspect_ratio: pad``
    in LLaVA-1.5's training scripts), so nothing at the edges is cropped away. v1.6: anyres.
    """
    cfg = as_config(model)
    side = cfg.vision_config.image_size
    common = dict(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, do_center_crop=True,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True,
    )
    if cfg.model_type == "llava_next":
        return LlavaNextImageProcessorPil(image_grid_pinpoints=[list(p) for p in cfg.image_grid_pinpoints],
                                          do_pad=True, **common)
    if getattr(cfg, "mm_projector_type", "mlp2x_gelu") == "linear":
        return CLIPImageProcessorPil(**common)
    return LlavaImageProcessorPil(do_pad=True, **common)


def padding_like_llava(image_processor, model):
    """``image_processor`` as LLaVA-1.5 preprocesses: a v1.5 model's processor that does not pad to a square (the
    llava-hf checkpoints' ``CLIPImageProcessor``: shortest edge, then a centre crop that cuts the longer side) is
    replaced by a ``LlavaImageProcessorPil`` with the same sizes and normalisation and ``do_pad=True``. LLaVA's stage
    2 pads (haotian-liu/LLaVA@c121f04 scripts/v1_5/finetune.sh:15 ``--image_aspect_ratio pad``, applied in
    llava/train/train.py:702-715), and so does its inference (llava/mm_utils.py:166-172). v1 and v1.6 processors
    are returned unchanged."""
    cfg = as_config(model)
    if cfg.model_type != "llava" or getattr(cfg, "mm_projector_type", "mlp2x_gelu") == "linear":
        return image_processor
    if type(image_processor).__name__.startswith("LlavaImageProcessor") and image_processor.do_pad:
        return image_processor
    ip = image_processor
    return LlavaImageProcessorPil(do_pad=True, size=dict(ip.size), crop_size=dict(ip.crop_size),
                                  do_center_crop=ip.do_center_crop, image_mean=list(ip.image_mean),
                                  image_std=list(ip.image_std), do_convert_rgb=True, resample=ip.resample)


def build_processor(model, tokenizer=None, num_additional_image_tokens: int = 1, image_processor=None):
    """A ``LlavaProcessor`` (v1, v1.5) or ``LlavaNextProcessor`` (v1.6) for a model.

    ``tokenizer`` defaults to the committed tiny tokenizer. With a full-size model name the processor counts and
    lays out image tokens exactly as the real checkpoint's does, but its text ids are the tiny tokenizer's: to
    run a real checkpoint, use ``load_processor`` on it.
    ``num_additional_image_tokens`` is exposed only so the book can show what the wrong value does.
    ``image_processor`` defaults to ``build_image_processor(model)`` (pass a checkpoint's own to keep it).
    """
    cfg = as_config(model)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    cls = LlavaNextProcessor if cfg.model_type == "llava_next" else LlavaProcessor
    return cls(
        image_processor=image_processor or build_image_processor(cfg), tokenizer=tokenizer, patch_size=cfg.vision_config.patch_size,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy, image_token=IMAGE_TOKEN,
        num_additional_image_tokens=num_additional_image_tokens,
    )


def load_processor(path_or_name):
    """``AutoProcessor.from_pretrained`` a checkpoint folder, a Hub id, or a known name with a public checkpoint
    (no remote code), with the image processor's PIL backend. Where torchvision is installed, transformers 5 picks
    its torchvision backend by default, whose resampling differs from PIL's in the last bits (and, at seams, by up
    to 0.015 after normalisation); LLaVA's own preprocessing is PIL's (``CLIPImageProcessor``), and so is every
    processor this package builds."""
    from pathlib import Path

    from transformers import AutoImageProcessor, AutoProcessor

    from .architectures import hub_id, resolve_name
    from ..errors import UnknownModelError

    from .local import resolve

    source = str(path_or_name)
    if not Path(source).is_dir():
        try:
            source = hub_id(resolve_name(source)) or source
        except UnknownModelError:
            pass  # an id this package does not know: let transformers try it
        source = resolve(source)  # the folder in $LLAVA_NB_CHECKPOINTS where that is set
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=False)
    if not type(processor.image_processor).__name__.endswith("Pil"):
        processor.image_processor = AutoImageProcessor.from_pretrained(source, backend="pil", trust_remote_code=False)
    return processor

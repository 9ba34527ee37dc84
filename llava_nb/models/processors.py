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
    (no remote code)."""
    from pathlib import Path

    from transformers import AutoProcessor

    from .architectures import hub_id, resolve_name
    from ..errors import UnknownModelError

    source = str(path_or_name)
    if not Path(source).is_dir():
        try:
            source = hub_id(resolve_name(source)) or source
        except UnknownModelError:
            pass  # an id this package does not know: let transformers try it
    return AutoProcessor.from_pretrained(source, trust_remote_code=False)

"""How many ``<image>`` tokens one image becomes, for every LLaVA version, exactly.

v1 and v1.5 resize (and crop) every image to the ViT's square input, so the count is fixed:

    tokens = (image_size / patch)^2          # 224 px -> 16^2 = 256, 336 px -> 24^2 = 576

The CLS token is dropped (feature layer -2, strategy ``default``). v1.6 (anyres) tiles the image:

1. pick the grid pinpoint ``(bh, bw)`` that keeps the most effective resolution with the least padding;
2. resize keeping the aspect ratio, pad to the pinpoint, cut tiles of ``image_size``; also squash the whole image
   to one tile (the global view);
3. arrange the tiles' features as a ``ch x cw`` grid with ``ch = p * bh / image_size`` (``p`` patches a tile side),
   crop the rows (or columns) that came from padding, and append one ``image_newline`` per remaining row:

    tokens = p^2 (global view) + ch' * cw' (unpadded grid) + ch' (newlines)

This module reimplements transformers' ``LlavaNextProcessor._get_number_of_features`` and the model's
``unpad_image`` in integer arithmetic; the tests check both against transformers on many sizes. It reads a name, a
``ModelSpec``, a transformers config or a module (their numbers, by duck typing) and imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layout import as_numbers
from ..errors import ImageTokenMismatchError, InvalidSizeError


def check_size(height, width) -> tuple[int, int]:
    """``(height, width)`` as positive ints, or an ``InvalidSizeError`` saying what to fix."""
    for label, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) and not (
            hasattr(value, "__int__") and float(value) == int(value)
        ):
            raise InvalidSizeError(f"image {label} must be a whole number of pixels, got {value!r}")
        if int(value) <= 0:
            raise InvalidSizeError(f"image {label} must be a positive number of pixels, got {value!r}")
    return int(height), int(width)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"HxW"`` (e.g. ``"480x640"``: 480 px high, 640 px wide)."""
    parts = str(text).lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise InvalidSizeError(f"size must look like HEIGHTxWIDTH, e.g. 480x640; got {text!r}")
    return check_size(int(parts[0]), int(parts[1]))


def select_best_resolution(height: int, width: int, pinpoints) -> tuple[int, int]:
    """The pinpoint ``(bh, bw)`` that keeps the most of the image's resolution, then wastes the least area.

    For each pinpoint the image is scaled by ``s = min(bw / width, bh / height)`` (fit inside, keep aspect);
    effective resolution is ``min(s*w * s*h, w*h)`` (no credit for upscaling); waste is ``bh*bw - effective``.
    Same rule and tie-breaking (first wins) as LLaVA's ``select_best_resolution``.
    """
    best, best_eff, best_waste = None, -1, float("inf")
    for bh, bw in pinpoints:
        scale = min(bw / width, bh / height)
        dw, dh = int(width * scale), int(height * scale)
        effective = min(dw * dh, width * height)
        waste = bh * bw - effective
        if effective > best_eff or (effective == best_eff and waste < best_waste):
            best, best_eff, best_waste = (bh, bw), effective, waste
    return best


def pinpoint_candidates(height: int, width: int, pinpoints) -> list[dict]:
    """Every pinpoint's score for one image: the numbers ``select_best_resolution`` compares."""
    height, width = check_size(height, width)
    best = select_best_resolution(height, width, pinpoints)
    rows = []
    for bh, bw in pinpoints:
        scale = min(bw / width, bh / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        rows.append({"pinpoint (h x w)": f"{bh} x {bw}", "scale": round(scale, 4), "effective pixels": effective,
                     "wasted pixels": bh * bw - effective, "chosen": (bh, bw) == tuple(best)})
    return rows


@dataclass(frozen=True)
class AnyresLayout:
    """Everything anyres decides for one image (v1.6). Sizes are (height, width)."""

    image_size: tuple[int, int]  # the original image
    pinpoint: tuple[int, int]  # the chosen canvas, in pixels
    grid: tuple[int, int]  # tiles: rows x cols
    tile: int  # tile side in pixels (the ViT's input size)
    patches_per_tile: int  # p: patches a tile side
    resized: tuple[int, int]  # the image resized to fit the pinpoint, before padding
    feature_grid: tuple[int, int]  # (ch, cw): patch features of all tiles before unpadding
    unpadded_grid: tuple[int, int]  # (ch', cw') after cropping padding rows/columns
    base_tokens: int  # global view, p^2
    grid_tokens: int  # ch' * cw'
    newline_tokens: int  # ch'

    @property
    def tokens(self) -> int:
        return self.base_tokens + self.grid_tokens + self.newline_tokens

    @property
    def num_tiles(self) -> int:
        return self.grid[0] * self.grid[1]


def resized_for_pinpoint(height: int, width: int, pinpoint) -> tuple[int, int]:
    """Size of the image resized to fit inside ``pinpoint`` keeping its aspect ratio (LLaVA's ``resize_and_pad``)."""
    bh, bw = pinpoint
    scale_w, scale_h = bw / width, bh / height
    if scale_w < scale_h:
        return min(int(round(height * scale_w)), bh), bw
    return bh, min(int(round(width * scale_h)), bw)


def anyres_layout(model, height: int, width: int) -> AnyresLayout:
    """The anyres decisions for an image of ``height x width`` on a v1.6 model (name, spec, config or module)."""
    height, width = check_size(height, width)
    cfg = as_numbers(model)
    if cfg.model_type != "llava_next":
        raise ImageTokenMismatchError(
            f"anyres tiling is a LLaVA v1.6 (llava_next) feature; {getattr(cfg, 'llava_nb_name', cfg.model_type)} "
            "resizes every image to one square view"
        )
    tile = cfg.vision_config.image_size
    p = tile // cfg.vision_config.patch_size
    bh, bw = select_best_resolution(height, width, cfg.image_grid_pinpoints)
    rows, cols = bh // tile, bw // tile
    ch, cw = p * rows, p * cols
    # unpad_image: crop the rows (or columns) of features that only saw padding.
    if width * ch > cw * height:  # image wider than the canvas: padding above and below
        new_h = (height * cw) // width
        pad = (ch - new_h) // 2
        uh, uw = ch - 2 * pad, cw
    else:  # image taller (or equal): padding left and right
        new_w = (width * ch) // height
        pad = (cw - new_w) // 2
        uh, uw = ch, cw - 2 * pad
    return AnyresLayout(
        image_size=(height, width), pinpoint=(bh, bw), grid=(rows, cols), tile=tile, patches_per_tile=p,
        resized=resized_for_pinpoint(height, width, (bh, bw)), feature_grid=(ch, cw), unpadded_grid=(uh, uw),
        base_tokens=p * p, grid_tokens=uh * uw, newline_tokens=uh,
    )


def count_image_tokens(model, height: int, width: int) -> int:
    """How many image tokens (and image features) one ``height x width`` image becomes.

    ``model`` is a name, an alias, a ``ModelSpec``, a config or a module. v1/v1.5 give ``(image_size / patch)^2``
    whatever the size (plus one if the CLS feature is kept, strategy ``full``); v1.6 follows anyres (see the module
    docstring).
    """
    height, width = check_size(height, width)
    cfg = as_numbers(model)
    if cfg.model_type == "llava_next":
        return anyres_layout(cfg, height, width).tokens
    vision = cfg.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    return n + (1 if cfg.vision_feature_select_strategy == "full" else 0)


def max_image_tokens(model) -> int:
    """The most image tokens one image of any size becomes: v1/v1.5's fixed count; for v1.6 the global view plus
    the largest pinpoint's whole feature grid and one newline per row (unpadding only removes rows or columns, so
    no image exceeds it; an image of the pinpoint's own shape reaches it)."""
    cfg = as_numbers(model)
    if cfg.model_type != "llava_next":
        return count_image_tokens(cfg, 1, 1)
    tile = cfg.vision_config.image_size
    p = tile // cfg.vision_config.patch_size
    return p * p + max(p * (bh // tile) * p * (bw // tile) + p * (bh // tile) for bh, bw in cfg.image_grid_pinpoints)


def image_token_id(cfg) -> int:
    """The ``<image>`` id: ``image_token_id`` of a transformers config, ``image_token_index`` of a ``ModelSpec``."""
    value = getattr(cfg, "image_token_id", None)
    return cfg.image_token_index if value is None else value


def _count_id(input_ids, token_id: int) -> int:
    """How often ``token_id`` occurs in ``input_ids``: a tensor or array (counted by torch), or nested lists."""
    if hasattr(input_ids, "shape"):
        import torch

        return int((torch.as_tensor(input_ids) == token_id).sum())
    if isinstance(input_ids, (list, tuple)):
        return sum(_count_id(x, token_id) for x in input_ids)
    return int(input_ids == token_id)


def check_image_tokens(model, input_ids, image_sizes) -> None:
    """Raise ``ImageTokenMismatchError`` unless ``input_ids`` hold exactly the image tokens the images need.

    ``input_ids`` is a list or tensor of token ids (one sample or a batch); ``image_sizes`` a list of
    ``(height, width)``, one per image, in order. This is the check behind transformers' "Image features and
    image tokens do not match", made early and with the likely cause named.
    """
    cfg = as_numbers(model)
    found = _count_id(input_ids, image_token_id(cfg))
    expected = sum(count_image_tokens(cfg, h, w) for h, w in image_sizes)
    if found != expected:
        hint = (
            "the sequence was probably truncated through the image tokens: raise the maximum length or drop the "
            "sample"
            if found < expected
            else "the prompt has more <image> placeholders than images (or was expanded twice)"
        )
        if expected - found == len(image_sizes) and cfg.model_type != "llava_next":
            hint = "the processor dropped one token per image: set num_additional_image_tokens=1 (CLIP's CLS token)"
        raise ImageTokenMismatchError(
            f"the prompt has {found} image tokens but {len(image_sizes)} image(s) of sizes {list(image_sizes)} "
            f"give {expected} features: {hint}"
        )

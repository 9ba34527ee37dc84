"""What a local llava-hf checkpoint folder must hold before training starts, checked from its JSON files alone.

``train()`` runs ``check_checkpoint`` on a checkpoint folder in the launching process, before any worker starts or
any weight loads; each problem is a one-line ``CheckpointError`` naming the file, the values and the fix:

* ``MissingCheckpointFileError``: no ``config.json``, no processor (``processor_config.json`` or
  ``preprocessor_config.json``) or no tokenizer (``tokenizer.json`` or ``tokenizer_config.json``). A folder saved by
  ``model.save_pretrained`` alone has weights but no processor. (A folder whose config names a tiny model,
  ``llava_nb_name: tiny-...``, may lack the processor: the loader pairs it with the committed tiny tokenizer and
  builds its image processor from the config, as it was built.)
* ``MissingImageTokenError``: the tokenizer has no ``<image>`` token, or gives it another id than the config's
  ``image_token_index`` (the id whose embedding positions receive the image features).
* ``ImageSizeMismatchError``: the image processor makes images of another size than the vision tower's
  ``vision_config.image_size``; for LLaVA-NeXT (v1.6) also tiles of another size, other ``image_grid_pinpoints``
  than the model's, or a pinpoint that is not a whole number of tiles.

The processor's settings are read as transformers 5.24 reads them: ``processor_config.json``'s nested
``image_processor`` first, else ``preprocessor_config.json`` (``image_processing_base.py``,
``get_image_processor_dict``), with the class defaults of ``CLIPImageProcessor``, ``LlavaImageProcessor`` and
``LlavaNextImageProcessor`` for missing keys. Pure Python: no torch, no transformers, no weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import LlavaNbError
from .templates import IMAGE_TOKEN

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: the class defaults of transformers' CLIP/LLaVA/LLaVA-NeXT image processors (e.g. models/llava_next/
#: image_processing_llava_next.py:60-69) and configs (configuration_llava_next.py:64, 75, 86-90)
DEFAULT_SIZE = {"shortest_edge": 224}
DEFAULT_CROP = {"height": 224, "width": 224}
DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
DEFAULT_IMAGE_TOKEN_INDEX = 32000
CLIP_DEFAULT_IMAGE_SIZE = 224  # CLIPVisionConfig's, when vision_config omits image_size
LLAVA_DEFAULT_IMAGE_SIZE = 336  # LlavaConfig's vision_config, when config.json has none


class CheckpointError(LlavaNbError):
    """A checkpoint folder that cannot be trained as it is; the message names the file and the fix."""


class MissingCheckpointFileError(CheckpointError):
    """A checkpoint folder without its config, processor or tokenizer files."""


class MissingImageTokenError(CheckpointError):
    """A tokenizer without the ``<image>`` token at the config's ``image_token_index``."""


class ImageSizeMismatchError(CheckpointError):
    """An image processor whose output size (or anyres grid) disagrees with the vision tower's."""


@dataclass(frozen=True)
class CheckedCheckpoint:
    """What ``check_checkpoint`` read: the folder, its config, its processor file (None: the tiny fallback) and
    where its tokenizer is."""

    folder: Path
    config: dict
    processor_file: Path | None
    tokenizer_dir: Path
    image_token_id: int


def check_checkpoint(folder) -> CheckedCheckpoint:
    """Check a checkpoint folder's files (see the module docstring); raises a ``CheckpointError``."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MissingCheckpointFileError(
            f"{folder} has no config.json, so it is not a transformers checkpoint folder: give the folder that "
            f"save_pretrained wrote (config.json, *.safetensors, the processor's files) or a model name")
    config = _read_json(config_file)
    processor_file, image_processor = _image_processor(folder, config)
    if processor_file is None:  # a tiny model's folder: the committed tokenizer, an image processor from the config
        from ..paths import TOKENIZER_DIR

        return CheckedCheckpoint(folder, config, None, TOKENIZER_DIR, _image_token(TOKENIZER_DIR, config))
    image_token_id = _image_token(folder, config)
    _image_sizes(config, image_processor, config_file, processor_file)
    return CheckedCheckpoint(folder, config, processor_file, folder, image_token_id)


def has_own_processor(folder) -> bool:
    """Whether a checkpoint folder holds its processor; False only for a tiny model's folder without one (the
    loader's fallback); a ``CheckpointError`` for any other folder without one. Reads no tokenizer."""
    folder = Path(folder)
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    return _image_processor(folder, config)[0] is not None


def base_model_hint(config: dict) -> str:
    """An example of the llava-hf checkpoint a folder of this architecture was fine-tuned from."""
    if config.get("model_type") == "llava_next":
        text = (config.get("text_config") or {}).get("model_type")
        return "llava-hf/llava-v1.6-mistral-7b-hf" if text == "mistral" else "llava-hf/llava-v1.6-vicuna-7b-hf"
    return "llava-hf/llava-1.5-7b-hf"


def _save_processor_fix(folder: Path, config: dict) -> str:
    return (f"save the base model's processor into it: AutoProcessor.from_pretrained(BASE).save_pretrained("
            f"'{folder}') with BASE the llava-hf checkpoint it was fine-tuned from (e.g. {base_model_hint(config)})")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); restore it from the checkpoint it came "
                              "from") from None


def _image_processor(folder: Path, config: dict) -> tuple[Path | None, dict]:
    """(file, settings) of the folder's image processor, as transformers reads them; (None, {}) for a tiny
    model's folder without one."""
    nested = folder / "processor_config.json"
    if nested.is_file():
        settings = _read_json(nested).get("image_processor")
        if isinstance(settings, dict):
            return nested, settings
    flat = folder / "preprocessor_config.json"
    if flat.is_file():
        return flat, _read_json(flat)
    if str(config.get("llava_nb_name", "")).startswith("tiny-"):
        return None, {}
    raise MissingCheckpointFileError(
        f"{folder} has no processor (neither preprocessor_config.json nor processor_config.json with an "
        f"image_processor), so its images cannot be prepared as the model was trained: "
        + _save_processor_fix(folder, config))


def _token_id(folder: Path, token: str) -> tuple[Path, int | None]:
    """(file read, id of ``token`` or None) in a folder's tokenizer: ``tokenizer.json``'s added tokens and
    vocabulary, else ``tokenizer_config.json``'s ``added_tokens_decoder`` (a slow tokenizer's added tokens)."""
    fast = folder / "tokenizer.json"
    if fast.is_file():
        data = _read_json(fast)
        added = {t.get("content"): t.get("id") for t in data.get("added_tokens") or []}
        vocab = (data.get("model") or {}).get("vocab") or {}
        if isinstance(vocab, list):  # Unigram: [piece, score] rows, the id is the row
            vocab = {row[0]: i for i, row in enumerate(vocab) if row and row[0] == token}
        return fast, added.get(token, vocab.get(token))
    slow = folder / "tokenizer_config.json"
    if slow.is_file():
        decoder = _read_json(slow).get("added_tokens_decoder") or {}
        return slow, next((int(i) for i, t in decoder.items() if t.get("content") == token), None)
    raise MissingCheckpointFileError(
        f"{folder} has no tokenizer (neither tokenizer.json nor tokenizer_config.json): save the base model's "
        f"tokenizer into it, e.g. AutoProcessor.from_pretrained(BASE).save_pretrained('{folder}')")


def _image_token(folder: Path, config: dict) -> int:
    """The id of ``<image>`` in the folder's tokenizer; it must be the config's ``image_token_index``."""
    wanted = config.get("image_token_index", config.get("image_token_id", DEFAULT_IMAGE_TOKEN_INDEX))
    path, found = _token_id(folder, IMAGE_TOKEN)
    fix = (f"save the base model's tokenizer into the folder (AutoProcessor.from_pretrained(BASE).save_pretrained"
           f"('{folder}'), e.g. BASE={base_model_hint(config)}) or add the token with "
           f"tokenizer.add_special_tokens({{'additional_special_tokens': ['{IMAGE_TOKEN}']}}) so that it gets id "
           f"{wanted}")
    if found is None:
        raise MissingImageTokenError(
            f"{path} has no {IMAGE_TOKEN} token, the placeholder whose id the config's image_token_index "
            f"({wanted}, {folder / 'config.json'}) marks for the image features: {fix}")
    if found != wanted:
        raise MissingImageTokenError(
            f"{path} gives {IMAGE_TOKEN} id {found} but {folder / 'config.json'} has image_token_index {wanted}, so "
            f"no image feature would find its place: {fix}")
    return found


def _square(value, what: str, path: Path) -> tuple[int, int]:
    """(height, width) of a size setting: an int, {"height", "width"} or {"shortest_edge"}."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    if isinstance(value, dict) and "shortest_edge" in value:
        return int(value["shortest_edge"]), int(value["shortest_edge"])
    raise ImageSizeMismatchError(f"{path}: {what} {value!r} is not a size transformers reads (an int, "
                                 "{'height', 'width'} or {'shortest_edge'}); restore the base model's processor")


def _image_sizes(config: dict, processor: dict, config_file: Path, processor_file: Path) -> None:
    """The image processor makes what the vision tower takes; for v1.6, with the model's tiles and grid."""
    vision = config.get("vision_config")
    side = LLAVA_DEFAULT_IMAGE_SIZE if vision is None else vision.get("image_size", CLIP_DEFAULT_IMAGE_SIZE)
    crop = _square(processor.get("crop_size", DEFAULT_CROP), "crop_size", processor_file)
    size = _square(processor.get("size", DEFAULT_SIZE), "size", processor_file)
    made, setting = (crop, "crop_size") if processor.get("do_center_crop", True) else (size, "size")
    fix = (f"set {setting} in {processor_file.name} to {side} (or {_save_processor_fix(config_file.parent, config)})")
    if made != (side, side):
        raise ImageSizeMismatchError(
            f"{config_file} has vision_config.image_size {side} (the vision tower takes {side}x{side} images) but "
            f"{processor_file} makes {made[0]}x{made[1]} images ({setting} {processor.get(setting)}): {fix}")
    if config.get("model_type") != "llava_next":
        return
    if crop != (side, side):  # LlavaNextImageProcessor cuts tiles of crop_size's height, whatever do_center_crop says
        raise ImageSizeMismatchError(
            f"{processor_file} cuts anyres tiles of {crop[0]} px (crop_size) but {config_file} has "
            f"vision_config.image_size {side}: set crop_size in {processor_file.name} to {side}")
    model_grid = [list(p) for p in config.get("image_grid_pinpoints") or DEFAULT_PINPOINTS]
    processor_grid = [list(p) for p in processor.get("image_grid_pinpoints") or DEFAULT_PINPOINTS]
    if processor_grid != model_grid:
        raise ImageSizeMismatchError(
            f"{processor_file} tiles images on image_grid_pinpoints {processor_grid} but {config_file} counts their "
            f"features on {model_grid}: make the two lists equal (the model's is the one it was trained with)")
    uneven = [p for p in model_grid if p[0] % side or p[1] % side]
    if uneven:
        raise ImageSizeMismatchError(
            f"{config_file}: image_grid_pinpoints {uneven} are not whole numbers of {side}-px tiles "
            f"(vision_config.image_size): use multiples of {side}, as the model's grid does")

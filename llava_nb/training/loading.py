"""Loading what a run trains: a tiny name (the pretrained tiny ViT and LLM, a random projector), a checkpoint folder,
or a Hugging Face id; with its tokenizer, image processor and chat template."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..errors import LlavaNbError

def tiny_name(model: str) -> str | None:
    """The tiny model a name or checkpoint folder is (from ``llava_nb_name`` in its config.json), else None."""
    from ..models.architectures import resolve_name

    config = Path(model) / "config.json"
    if config.is_file():
        name = json.loads(config.read_text()).get("llava_nb_name") or ""
    else:
        try:
            name = resolve_name(model)
        except LlavaNbError:
            return None
    return name if name.startswith("tiny-") else None


def default_template(config, stage: int) -> str:
    if stage == 1:
        return "plain"
    name = getattr(config, "llava_nb_name", "") or ""
    if config.model_type == "llava_next" and (config.text_config.model_type == "mistral" or name == "tiny-llava-v1.6"):
        return "mistral_instruct"
    return "vicuna_v1"


def load_for_training(model: str, stage: int, **load_kwargs):
    """(model, tokenizer, image_processor) for a tiny name (pretrained parts, random projector), a checkpoint
    folder, or a Hub id; ``load_kwargs`` go to ``from_pretrained`` (the method's dtype, QLoRA's quantization
    config: ``methods.setup.load_kwargs``). A checkpoint folder's files are checked before its weights load
    (``models.checkpoint_check``)."""
    from ..models.architectures import build_model, load_model
    from .pretrain import load_pretrained_parts

    if tiny_name(model) and not Path(model).is_dir():
        if "quantization_config" in load_kwargs:
            raise LlavaNbError(f"{model} is built, not loaded: a quantized (QLoRA) run needs a checkpoint folder, "
                               "e.g. a stage-1 run's final_dir (train(..., stage=2) of a tiny name does that)")
        with _whole_model_construction():  # built in fp32; the method's set-up casts it
            net = build_model(model)
            load_pretrained_parts(net)
        return (net, *load_processing(model))
    from ..models.local import resolve

    model = resolve(model)  # a Hub id's folder in $LLAVA_NB_CHECKPOINTS where that is set
    tokenizer, image_processor = load_processing(model)
    return load_model(model, **load_kwargs), tokenizer, image_processor


def _uses_tiny_processing(model: str, check: bool = True) -> bool:
    """A tiny name, or a tiny model's folder without a processor: the committed tiny tokenizer and an image
    processor built from the config (what it was built with). ``check``: check a folder's files first."""
    if not Path(model).is_dir():
        return bool(tiny_name(model))
    from ..models.checkpoint_check import check_checkpoint, has_own_processor

    if check:
        return check_checkpoint(model).processor_file is None
    return not has_own_processor(model)


def load_processing(model: str):
    """(tokenizer, image_processor) of a tiny name, checkpoint folder (its files checked) or Hub id; no weights.
    A v1.5 checkpoint's image processor pads to a square as LLaVA-1.5 trains (``processors.padding_like_llava``)."""
    from ..models.processors import build_image_processor, load_processor, padding_like_llava
    from ..models.tokenizer import load_tokenizer

    if _uses_tiny_processing(model):
        return load_tokenizer(), build_image_processor(_model_config(model))
    processor = load_processor(model)
    return processor.tokenizer, padding_like_llava(processor.image_processor, _model_config(model))


def load_text_tokenizer(model: str):
    """The tokenizer ``load_processing`` gives, alone (a checkpoint folder's tokenizer files only, the folder
    checked before: ``preflight.check_model``)."""
    from ..models.tokenizer import load_tokenizer

    if _uses_tiny_processing(model, check=False):
        return load_tokenizer()
    if Path(model).is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    return load_processing(model)[0]


@contextlib.contextmanager
def _whole_model_construction():
    """Build (or run) a model whole even while an Accelerate/DeepSpeed ZeRO-3 config is active.

    Workaround for transformers 5.24: with a ZeRO-3 config registered, ``Model(config)`` runs under
    ``deepspeed.zero.Init``, and ``_init_weights`` then zeroes the embedding's ``padding_idx`` row of an already
    partitioned, empty weight: ``IndexError: index 3 is out of bounds for dimension 0 with size 0``. A tiny model
    is small, so it is built whole and ``deepspeed.initialize`` partitions it afterwards (``from_pretrained`` of a
    checkpoint folder keeps ``zero.Init``, which loads correctly). Restores the config afterwards.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def _plain_model(config, state: dict):
    """A model of ``config``'s own class holding ``state`` (a full state dict), for ``save_pretrained``. Built on
    meta, so nothing is allocated or copied; its non-persistent buffers (RoPE's ``inv_freq``) stay on meta, so it
    is for saving only."""
    import torch

    from ..models.architectures import model_class

    with torch.device("meta"):
        plain = model_class(config)(config)
    plain.load_state_dict(state, assign=True)
    return plain.eval()


def _model_config(model: str):
    """The config of a tiny name, checkpoint folder or Hub id (DeepSpeed's bucket sizes and FSDP's blocks follow it)."""
    from ..models.architectures import get_config

    if tiny_name(model) and not Path(model).is_dir():
        return get_config(tiny_name(model))
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model)

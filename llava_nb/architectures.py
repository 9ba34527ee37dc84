"""LLaVA architectures by name: configs, random-weight models and checkpoint loading.

Three generations share one skeleton (``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``):

    pixels -> CLIP ViT (hidden states of layer -2, CLS dropped) -> projector -> spliced into the LLM's
    text embeddings at the ``<image>`` positions -> LLM -> logits

=========  ==========  =================  ======================================
version    ViT input   projector          extra
=========  ==========  =================  ======================================
v1         224 px      one Linear         -
v1.5       336 px      Linear-GELU-Linear  -
v1.6       336 px      Linear-GELU-Linear  anyres tiles + learned ``image_newline``
=========  ==========  =================  ======================================

The ``tiny-*`` models keep every structural feature of their version at a size a laptop CPU trains in minutes:
14 px patches, feature layer -2 without CLS, the same projector kind, and for v1.6 the anyres grid pinpoints
scaled down by the same factor as the tile (336 -> 84 px).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MistralConfig,
    PretrainedConfig,
)

from .errors import UnknownModelError

# --------------------------------------------------------------------------------------------------------------
# Building blocks of the real models (values from the public checkpoints' config.json files)
# --------------------------------------------------------------------------------------------------------------

#: v1.6 anyres grid pinpoints, (height, width) in pixels, of the public llava-v1.6 checkpoints.
V16_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _clip_vit_l14(image_size: int) -> CLIPVisionConfig:
    """openai/clip-vit-large-patch14(-336): 24 layers, width 1024, 16 heads, 14 px patches."""
    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=image_size, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )


def _vicuna(hidden: int, intermediate: int, layers: int, heads: int, vocab: int) -> LlamaConfig:
    """Vicuna (Llama-architecture) language models; HF's LLaVA checkpoints pad the vocabulary to 32064."""
    return LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, vocab_size=vocab, max_position_embeddings=4096, rms_norm_eps=1e-5,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def _mistral_7b(vocab: int) -> MistralConfig:
    """Mistral-7B-Instruct-v0.2: grouped-query attention with 8 KV heads, rope theta 1e6, no sliding window."""
    return MistralConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=vocab, max_position_embeddings=32768, rms_norm_eps=1e-5,
        rope_theta=1_000_000.0, sliding_window=None, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


# --------------------------------------------------------------------------------------------------------------
# The tiny world
# --------------------------------------------------------------------------------------------------------------

TINY_PATCH = 14
TINY_TILE = 84  # 336 / 4, so 6 x 6 = 36 patches a tile, as 24 x 24 = 576 at full size
TINY_V1_SIZE = 56  # 224 / 4: 4 x 4 = 16 patches, as 16 x 16 = 256 at full size
TINY_SCALE = TINY_TILE / 336
TINY_GRID_PINPOINTS = [[int(h * TINY_SCALE), int(w * TINY_SCALE)] for h, w in V16_GRID_PINPOINTS]


def _tiny_vit(image_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        image_size=image_size, patch_size=TINY_PATCH, projection_dim=64, hidden_act="quick_gelu",
    )


def _tiny_llama(vocab: int) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=vocab, max_position_embeddings=1024, rms_norm_eps=1e-5, pad_token_id=3, bos_token_id=1,
        eos_token_id=2,
    )


def _tiny_vocab() -> tuple[int, int]:
    """(vocabulary size, ``<image>`` id) of the committed tiny tokenizer, read without loading transformers."""
    from .paths import TOKENIZER_DIR

    path = TOKENIZER_DIR / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(
            f"the tiny tokenizer is missing at {path}; regenerate it with `python -m llava_nb regenerate tokenizer`"
        )
    tok = json.loads(path.read_text())
    ids = set(tok["model"]["vocab"].values()) | {t["id"] for t in tok["added_tokens"]}
    image_id = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<image>")
    return max(ids) + 1, image_id


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------


def _llava(vision, text, image_token_index, projector="mlp2x_gelu", **kw) -> LlavaConfig:
    image_seq_length = (vision.image_size // vision.patch_size) ** 2
    cfg = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_index,
        image_seq_length=image_seq_length, projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=-2, **kw,
    )
    cfg.mm_projector_type = projector
    return cfg


def _llava_next(vision, text, image_token_index, pinpoints) -> LlavaNextConfig:
    cfg = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_index,
        image_grid_pinpoints=pinpoints, projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=-2, image_seq_length=(vision.image_size // vision.patch_size) ** 2,
    )
    cfg.mm_projector_type = "mlp2x_gelu"
    return cfg


def _tiny(version: str) -> PretrainedConfig:
    vocab, image_id = _tiny_vocab()
    if version == "v1":
        return _llava(_tiny_vit(TINY_V1_SIZE), _tiny_llama(vocab), image_id, projector="linear")
    if version == "v1.5":
        return _llava(_tiny_vit(TINY_TILE), _tiny_llama(vocab), image_id)
    return _llava_next(_tiny_vit(TINY_TILE), _tiny_llama(vocab), image_id, TINY_GRID_PINPOINTS)


#: name -> (config factory, Hugging Face id of the public transformers-format checkpoint or None)
_REGISTRY = {
    "llava-v1-7b": (lambda: _llava(_clip_vit_l14(224), _vicuna(4096, 11008, 32, 32, 32000), 32000,
                                   projector="linear"), None),
    "llava-1.5-7b": (lambda: _llava(_clip_vit_l14(336), _vicuna(4096, 11008, 32, 32, 32064), 32000),
                     "llava-hf/llava-1.5-7b-hf"),
    "llava-1.5-13b": (lambda: _llava(_clip_vit_l14(336), _vicuna(5120, 13824, 40, 40, 32064), 32000),
                      "llava-hf/llava-1.5-13b-hf"),
    "llava-v1.6-mistral-7b": (lambda: _llava_next(_clip_vit_l14(336), _mistral_7b(32064), 32000, V16_GRID_PINPOINTS),
                              "llava-hf/llava-v1.6-mistral-7b-hf"),
    "llava-v1.6-vicuna-7b": (lambda: _llava_next(_clip_vit_l14(336), _vicuna(4096, 11008, 32, 32, 32064), 32000,
                                                 V16_GRID_PINPOINTS), "llava-hf/llava-v1.6-vicuna-7b-hf"),
    "tiny-llava-v1": (lambda: _tiny("v1"), None),
    "tiny-llava-1.5": (lambda: _tiny("v1.5"), None),
    "tiny-llava-v1.6": (lambda: _tiny("v1.6"), None),
}

#: Other spellings accepted for each name: the Hugging Face ids and the original LLaVA repository's ids.
ALIASES = {
    "llava-hf/llava-1.5-7b-hf": "llava-1.5-7b",
    "liuhaotian/llava-v1.5-7b": "llava-1.5-7b",
    "llava-v1.5-7b": "llava-1.5-7b",
    "llava-hf/llava-1.5-13b-hf": "llava-1.5-13b",
    "liuhaotian/llava-v1.5-13b": "llava-1.5-13b",
    "llava-v1.5-13b": "llava-1.5-13b",
    "llava-hf/llava-v1.6-mistral-7b-hf": "llava-v1.6-mistral-7b",
    "liuhaotian/llava-v1.6-mistral-7b": "llava-v1.6-mistral-7b",
    "llava-hf/llava-v1.6-vicuna-7b-hf": "llava-v1.6-vicuna-7b",
    "liuhaotian/llava-v1.6-vicuna-7b": "llava-v1.6-vicuna-7b",
}

KNOWN_MODELS = tuple(_REGISTRY)


def resolve_name(name: str) -> str:
    """The canonical model name for ``name`` (a known name or an alias, case-insensitive).

    Raises ``UnknownModelError`` listing every known name.
    """
    if not isinstance(name, str):
        raise UnknownModelError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key in _REGISTRY:
        return key
    if key in ALIASES:
        return ALIASES[key]
    raise UnknownModelError(
        f"unknown model {name!r}. Known names: {', '.join(KNOWN_MODELS)}; "
        f"Hugging Face aliases: {', '.join(sorted(ALIASES))}. "
        "To load your own checkpoint, pass its folder to load_model()."
    )


def hub_id(name: str) -> str | None:
    """The public transformers-format checkpoint of a model name, or None where there is none."""
    return _REGISTRY[resolve_name(name)][1]


def get_config(name: str) -> PretrainedConfig:
    """A fresh transformers config for a known model name or alias.

    The config carries ``mm_projector_type`` (``"linear"`` or ``"mlp2x_gelu"``) and ``llava_nb_name``.
    """
    canonical = resolve_name(name)
    cfg = _REGISTRY[canonical][0]()
    cfg.llava_nb_name = canonical
    return cfg


class LinearProjector(nn.Module):
    """LLaVA v1's projector: one Linear from the ViT width to the LLM width, ``h = W x + b``."""

    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.linear_1 = nn.Linear(
            config.vision_config.hidden_size, config.text_config.hidden_size, bias=config.multimodal_projector_bias
        )

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:  # (B, N, d_vit) -> (B, N, d_llm)
        return self.linear_1(image_features)


class LlavaV1ForConditionalGeneration(LlavaForConditionalGeneration):
    """``LlavaForConditionalGeneration`` with v1's single-Linear projector.

    transformers only implements the two-layer projector; v1 swaps it. The config records
    ``mm_projector_type="linear"`` so that ``load_model`` rebuilds the same module before loading weights.
    """

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        self.model.multi_modal_projector = LinearProjector(config)
        self.post_init()


def model_class(config: PretrainedConfig) -> type:
    """The transformers model class that matches a LLaVA config."""
    if config.model_type == "llava_next":
        return LlavaNextForConditionalGeneration
    if config.model_type == "llava":
        if getattr(config, "mm_projector_type", "mlp2x_gelu") == "linear":
            return LlavaV1ForConditionalGeneration
        return LlavaForConditionalGeneration
    raise UnknownModelError(
        f"config of model_type {config.model_type!r} is not a LLaVA config; expected 'llava' or 'llava_next'"
    )


def as_config(model) -> PretrainedConfig:
    """A config from a name, a config or a module."""
    if isinstance(model, str):
        return get_config(model)
    if isinstance(model, PretrainedConfig):
        return model
    if isinstance(model, nn.Module) and hasattr(model, "config"):
        return model.config
    raise UnknownModelError(
        f"expected a model name, a transformers config or a model, got {type(model).__name__}"
    )


def build_model(name, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, seed: int = 0):
    """A LLaVA model with random weights, from a name, alias or config.

    ``device="meta"`` allocates nothing: use it to count parameters or inspect shapes of the 7B and 13B models.
    The same ``seed`` gives bit-identical weights.
    """
    config = copy.deepcopy(as_config(name))
    cls = model_class(config)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    try:  # built directly in ``dtype``: a 7B model in bf16 never exists in fp32 first
        if dtype is not None and dtype.is_floating_point:
            torch.set_default_dtype(dtype)
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(default)
    if dtype is not None:
        model = model.to(dtype)
    return model


def load_model(path_or_name: str | Path, dtype: torch.dtype | None = None, **kwargs):
    """``from_pretrained`` a LLaVA checkpoint: a local folder, a Hugging Face id, or a known name with one.

    Weights load from safetensors only (``use_safetensors=True``) and no remote code runs. Extra keyword
    arguments go to ``from_pretrained`` (e.g. ``device_map``).
    """
    path = Path(path_or_name)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.exists():
            raise UnknownModelError(f"{path} has no config.json; is it a saved checkpoint folder?")
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path))
        source = str(path)
    else:
        name = str(path_or_name)
        try:
            canonical = resolve_name(name)
        except UnknownModelError:
            raise UnknownModelError(
                f"{name!r} is neither a local checkpoint folder nor a known model. Known names: "
                f"{', '.join(KNOWN_MODELS)}; Hugging Face aliases: {', '.join(sorted(ALIASES))}"
            ) from None
        source = hub_id(canonical)
        if source is None:
            raise UnknownModelError(
                f"{canonical!r} has no public transformers-format checkpoint; use build_model({canonical!r}) "
                "for random weights, or pass the folder of a checkpoint you saved"
            )
        config = get_config(canonical)
    cls = model_class(config)
    if dtype is not None:
        kwargs["dtype"] = dtype
    return cls.from_pretrained(source, use_safetensors=True, trust_remote_code=False, **kwargs)

"""Every known LLaVA model as plain numbers: the one source of its configuration (pure Python, no torch).

A ``ModelSpec`` carries what the public checkpoints' ``config.json`` files say, under transformers' attribute names,
so the same code reads a spec or a transformers config (duck typing): ``spec.vision_config.image_size``,
``spec.text_config.num_key_value_heads``, ``spec.model_type``. ``architectures.get_config`` turns a spec into a
transformers config; the memory calculator and the token arithmetic read the spec directly, which keeps
``python -m llava_nb memory|tokens|params`` free of torch.

=========  ==========  =================  ======================================
version    ViT input   projector          extra
=========  ==========  =================  ======================================
v1         224 px      one Linear         -
v1.5       336 px      Linear-GELU-Linear  -
v1.6       336 px      Linear-GELU-Linear  anyres tiles + learned ``image_newline``
=========  ==========  =================  ======================================
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace

from ..errors import UnknownModelError
from ..paths import TOKENIZER_DIR


@dataclass(frozen=True)
class VisionSpec:
    """A CLIP ViT: ``image_size / patch_size`` patches a side."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    projection_dim: int
    hidden_act: str = "quick_gelu"
    model_type: str = "clip_vision_model"


@dataclass(frozen=True)
class TextSpec:
    """A Llama-architecture LLM (Vicuna, Mistral): ``num_key_value_heads < num_attention_heads`` is grouped-query
    attention."""

    model_type: str  # "llama" or "mistral"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ModelSpec:
    """A LLaVA model: ViT -> projector -> LLM. ``model_type`` is ``"llava"`` (v1, v1.5) or ``"llava_next"`` (v1.6)."""

    llava_nb_name: str
    model_type: str
    vision_config: VisionSpec
    text_config: TextSpec
    image_token_index: int
    mm_projector_type: str = "mlp2x_gelu"  # "linear" for v1
    image_grid_pinpoints: tuple = ()
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    hub: str | None = field(default=None, compare=False)

    @property
    def image_seq_length(self) -> int:
        """Image tokens of one square image at the ViT's input size (CLS dropped)."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2


# --------------------------------------------------------------------------------------------------------------
# Building blocks of the real models (values from the public checkpoints' config.json files)
# --------------------------------------------------------------------------------------------------------------

#: v1.6 anyres grid pinpoints, (height, width) in pixels, of the public llava-v1.6 checkpoints.
V16_GRID_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def clip_vit_l14(image_size: int) -> VisionSpec:
    """openai/clip-vit-large-patch14(-336): 24 layers, width 1024, 16 heads, 14 px patches."""
    return VisionSpec(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=image_size, patch_size=14, projection_dim=768)


def vicuna(hidden: int, intermediate: int, layers: int, heads: int, vocab: int) -> TextSpec:
    """Vicuna (Llama-architecture) language models; HF's LLaVA checkpoints pad the vocabulary to 32064."""
    return TextSpec("llama", hidden, intermediate, layers, heads, heads, vocab, max_position_embeddings=4096)


def mistral_7b(vocab: int) -> TextSpec:
    """Mistral-7B-Instruct-v0.2: grouped-query attention with 8 KV heads, rope theta 1e6, no sliding window."""
    return TextSpec("mistral", 4096, 14336, 32, 32, 8, vocab, max_position_embeddings=32768, rope_theta=1e6)


# --------------------------------------------------------------------------------------------------------------
# The tiny world: every structural feature of its version at a size a laptop CPU trains in minutes
# --------------------------------------------------------------------------------------------------------------

TINY_PATCH = 14
TINY_TILE = 84  # 336 / 4, so 6 x 6 = 36 patches a tile, as 24 x 24 = 576 at full size
TINY_V1_SIZE = 56  # 224 / 4: 4 x 4 = 16 patches, as 16 x 16 = 256 at full size
TINY_SCALE = TINY_TILE / 336
TINY_GRID_PINPOINTS = tuple((int(h * TINY_SCALE), int(w * TINY_SCALE)) for h, w in V16_GRID_PINPOINTS)


def tiny_vit(image_size: int) -> VisionSpec:
    return VisionSpec(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                      image_size=image_size, patch_size=TINY_PATCH, projection_dim=64)


def tiny_llama(vocab: int) -> TextSpec:
    return TextSpec("llama", 128, 344, 4, 4, 4, vocab, max_position_embeddings=1024, pad_token_id=3)


@functools.lru_cache(maxsize=1)
def tiny_vocab() -> tuple[int, int]:
    """(vocabulary size, ``<image>`` id) of the committed tiny tokenizer, read from its JSON."""
    path = TOKENIZER_DIR / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(
            f"the tiny tokenizer is missing at {path}; regenerate it with `python -m llava_nb regenerate tokenizer`")
    tok = json.loads(path.read_text())
    ids = set(tok["model"]["vocab"].values()) | {t["id"] for t in tok["added_tokens"]}
    image_id = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<image>")
    return max(ids) + 1, image_id


def _tiny(name: str) -> ModelSpec:
    vocab, image_id = tiny_vocab()
    if name == "tiny-llava-v1":
        return ModelSpec(name, "llava", tiny_vit(TINY_V1_SIZE), tiny_llama(vocab), image_id, mm_projector_type="linear")
    if name == "tiny-llava-1.5":
        return ModelSpec(name, "llava", tiny_vit(TINY_TILE), tiny_llama(vocab), image_id)
    return ModelSpec(name, "llava_next", tiny_vit(TINY_TILE), tiny_llama(vocab), image_id,
                     image_grid_pinpoints=TINY_GRID_PINPOINTS)


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------

_REAL = {
    "llava-v1-7b": lambda: ModelSpec("llava-v1-7b", "llava", clip_vit_l14(224), vicuna(4096, 11008, 32, 32, 32000),
                                     32000, mm_projector_type="linear"),
    "llava-1.5-7b": lambda: ModelSpec("llava-1.5-7b", "llava", clip_vit_l14(336), vicuna(4096, 11008, 32, 32, 32064),
                                      32000, hub="llava-hf/llava-1.5-7b-hf"),
    "llava-1.5-13b": lambda: ModelSpec("llava-1.5-13b", "llava", clip_vit_l14(336),
                                       vicuna(5120, 13824, 40, 40, 32064), 32000, hub="llava-hf/llava-1.5-13b-hf"),
    "llava-v1.6-mistral-7b": lambda: ModelSpec("llava-v1.6-mistral-7b", "llava_next", clip_vit_l14(336),
                                               mistral_7b(32064), 32000, image_grid_pinpoints=V16_GRID_PINPOINTS,
                                               hub="llava-hf/llava-v1.6-mistral-7b-hf"),
    "llava-v1.6-vicuna-7b": lambda: ModelSpec("llava-v1.6-vicuna-7b", "llava_next", clip_vit_l14(336),
                                              vicuna(4096, 11008, 32, 32, 32064), 32000,
                                              image_grid_pinpoints=V16_GRID_PINPOINTS,
                                              hub="llava-hf/llava-v1.6-vicuna-7b-hf"),
    "llava-v1.6-vicuna-13b": lambda: ModelSpec("llava-v1.6-vicuna-13b", "llava_next", clip_vit_l14(336),
                                               vicuna(5120, 13824, 40, 40, 32064), 32000,
                                               image_grid_pinpoints=V16_GRID_PINPOINTS,
                                               hub="llava-hf/llava-v1.6-vicuna-13b-hf"),
}
_TINY = ("tiny-llava-v1", "tiny-llava-1.5", "tiny-llava-v1.6")

KNOWN_MODELS = (*_REAL, *_TINY)

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
    "llava-hf/llava-v1.6-vicuna-13b-hf": "llava-v1.6-vicuna-13b",
    "liuhaotian/llava-v1.6-vicuna-13b": "llava-v1.6-vicuna-13b",
}


def resolve_name(name: str) -> str:
    """The canonical model name for ``name`` (a known name or an alias, case-insensitive).

    Raises ``UnknownModelError`` listing every known name.
    """
    if not isinstance(name, str):
        raise UnknownModelError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key in KNOWN_MODELS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    import difflib

    close = difflib.get_close_matches(key, [*KNOWN_MODELS, *ALIASES], n=1)
    raise UnknownModelError(
        f"unknown model {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        + f". Known names: {', '.join(KNOWN_MODELS)}; "
        f"Hugging Face aliases: {', '.join(sorted(ALIASES))}. "
        "To load your own checkpoint, pass its folder to load_model()."
    )


def get_spec(name: str) -> ModelSpec:
    """The ``ModelSpec`` of a known name or alias."""
    canonical = resolve_name(name)
    return _tiny(canonical) if canonical in _TINY else _REAL[canonical]()


def hub_id(name: str) -> str | None:
    """The public transformers-format checkpoint of a model name, or None where there is none."""
    return get_spec(name).hub


def with_text(spec: ModelSpec, **changes) -> ModelSpec:
    """A copy of ``spec`` with its LLM's numbers changed (e.g. ``vocab_size``)."""
    return replace(spec, text_config=replace(spec.text_config, **changes))

"""Every parameter tensor of a LLaVA model, from its numbers alone (pure Python, no torch).

``parameter_owners(model)`` reads a name, a ``ModelSpec`` or a transformers config (duck typing: the same attribute
names) and lists the modules that own parameters directly, in the order ``model.named_parameters()`` of the
transformers model yields them, each with its qualified name, kind and parameter shapes. ``tests/test_shapes.py``
checks the list against every known model built on the meta device.

A CLIP ViT of width d, MLP width f, patch p, image side s (n = (s/p)^2 + 1 positions, CLS included):

    embeddings      class_embedding d, patch conv d x 3 x p x p (no bias), position embedding n x d
    pre_layrnorm    2d
    each layer      k/v/q/out projections 4 (d^2 + d), layer_norm1, fc1 f d + f, fc2 d f + d, layer_norm2 (2d each)
    post_layernorm  2d

The projector maps k concatenated feature layers (k = 1 for an int ``vision_feature_layer``) to the LLM width h:
``linear`` (v1) is one Linear k d -> h, ``mlp2x_gelu`` a Linear k d -> h then h -> h, with biases when
``multimodal_projector_bias``. v1.6 (``llava_next``) adds ``image_newline`` (h), owned by the LLaVA body itself.
A Llama/Mistral LLM with a query heads of size e, g key/value heads, MLP width i and vocabulary V:

    embed_tokens    V h
    each layer      q (a e) h, k and v (g e) h each, o h (a e), gate and up i h each, down h i, two RMSNorms h each
    norm            h
    lm_head         V h, absent from the parameters when tied to embed_tokens (top-level ``tie_word_embeddings``)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

from ..errors import UnknownModelError

VIT_TYPES = ("clip_vision_model",)
LLM_TYPES = ("llama", "mistral")


@dataclass(frozen=True)
class Owner:
    """A module that owns parameters directly: qualified name, kind, LLaVA part, ((name, shape), ...)."""

    path: str
    kind: str  # "linear", "layer_norm", "rms_norm", "embedding", "conv", "tensor"
    params: tuple
    part: str = ""

    @property
    def numel(self) -> int:
        return sum(math.prod(shape) for _, shape in self.params)

    @property
    def leaf(self) -> str:
        """The module's own name (``q_proj``), what LoRA's ``target_modules`` match."""
        return self.path.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Numbers:
    """What the layout reads from a spec or config; hashable, so layouts are cached per architecture."""

    name: str
    anyres: bool
    vit: tuple  # (width d, MLP width f, layers, image side, patch, channels)
    feature_layers: tuple
    projector: str
    projector_bias: bool
    llm: tuple  # (width h, MLP width i, layers, heads a, kv heads g, head size e, vocabulary V)
    attention_bias: bool
    mlp_bias: bool
    tied: bool


def as_numbers(model):
    """The object carrying a model's numbers: ``get_spec(name)`` for a name or alias, a ``ModelSpec`` or
    transformers config as given, a module's ``config``."""
    if isinstance(model, str):
        from .specs import get_spec

        return get_spec(model)
    if hasattr(model, "vision_config") and hasattr(model, "text_config"):
        return model
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "vision_config"):
        return config
    raise UnknownModelError(f"expected a model name, a ModelSpec, a transformers config or a model, "
                            f"got {type(model).__name__}")


def read_numbers(model) -> Numbers:
    """``Numbers`` of a name, spec, config or module; ``UnknownModelError`` for towers the layout does not know."""
    cfg = as_numbers(model)
    v, t = cfg.vision_config, cfg.text_config
    if v.model_type not in VIT_TYPES or t.model_type not in LLM_TYPES:
        raise UnknownModelError(f"the parameter arithmetic knows a CLIP ViT with a Llama or Mistral LLM, not "
                                f"{v.model_type!r} with {t.model_type!r}")
    layers = cfg.vision_feature_layer
    tied = getattr(cfg, "tie_word_embeddings", None)  # transformers ties by the top-level flag; a spec by its LLM's
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return Numbers(
        name=getattr(cfg, "llava_nb_name", cfg.model_type), anyres=cfg.model_type == "llava_next",
        vit=(v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.image_size, v.patch_size,
             getattr(v, "num_channels", 3)),
        feature_layers=(layers,) if isinstance(layers, int) else tuple(layers),
        projector=getattr(cfg, "mm_projector_type", "mlp2x_gelu"),
        projector_bias=getattr(cfg, "multimodal_projector_bias", True),
        llm=(t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
             t.num_key_value_heads or t.num_attention_heads, head_dim, t.vocab_size),
        attention_bias=bool(getattr(t, "attention_bias", False)), mlp_bias=bool(getattr(t, "mlp_bias", False)),
        tied=bool(t.tie_word_embeddings if tied is None else tied))


def _linear(path: str, fan_in: int, fan_out: int, bias: bool) -> Owner:
    """``nn.Linear(fan_in, fan_out)``: weight (out, in), bias (out)."""
    return Owner(path, "linear", (("weight", (fan_out, fan_in)),) + ((("bias", (fan_out,)),) if bias else ()))


def _layer_norm(path: str, width: int) -> Owner:
    return Owner(path, "layer_norm", (("weight", (width,)), ("bias", (width,))))


def _vit(n: Numbers, p: str = "model.vision_tower") -> list[Owner]:
    d, f, layers, side, patch, channels = n.vit
    owners = [Owner(f"{p}.embeddings", "tensor", (("class_embedding", (d,)),)),
              Owner(f"{p}.embeddings.patch_embedding", "conv", (("weight", (d, channels, patch, patch)),)),
              Owner(f"{p}.embeddings.position_embedding", "embedding", (("weight", ((side // patch) ** 2 + 1, d)),)),
              _layer_norm(f"{p}.pre_layrnorm", d)]
    for i in range(layers):
        q = f"{p}.encoder.layers.{i}"
        owners += [_linear(f"{q}.self_attn.{x}", d, d, True) for x in ("k_proj", "v_proj", "q_proj", "out_proj")]
        owners += [_layer_norm(f"{q}.layer_norm1", d), _linear(f"{q}.mlp.fc1", d, f, True),
                   _linear(f"{q}.mlp.fc2", f, d, True), _layer_norm(f"{q}.layer_norm2", d)]
    return owners + [_layer_norm(f"{p}.post_layernorm", d)]


def _projector(n: Numbers, p: str = "model.multi_modal_projector") -> list[Owner]:
    fan_in, h = n.vit[0] * len(n.feature_layers), n.llm[0]
    if n.projector == "linear":
        return [_linear(f"{p}.linear_1", n.vit[0], h, n.projector_bias)]  # v1's LinearProjector reads one layer
    return [_linear(f"{p}.linear_1", fan_in, h, n.projector_bias), _linear(f"{p}.linear_2", h, h, n.projector_bias)]


def _llm(n: Numbers, p: str = "model.language_model") -> list[Owner]:
    h, i, layers, heads, kv_heads, e, vocab = n.llm
    owners = [Owner(f"{p}.embed_tokens", "embedding", (("weight", (vocab, h)),))]
    for j in range(layers):
        q = f"{p}.layers.{j}"
        owners += [_linear(f"{q}.self_attn.q_proj", h, heads * e, n.attention_bias),
                   _linear(f"{q}.self_attn.k_proj", h, kv_heads * e, n.attention_bias),
                   _linear(f"{q}.self_attn.v_proj", h, kv_heads * e, n.attention_bias),
                   _linear(f"{q}.self_attn.o_proj", heads * e, h, n.attention_bias),
                   _linear(f"{q}.mlp.gate_proj", h, i, n.mlp_bias), _linear(f"{q}.mlp.up_proj", h, i, n.mlp_bias),
                   _linear(f"{q}.mlp.down_proj", i, h, n.mlp_bias),
                   Owner(f"{q}.input_layernorm", "rms_norm", (("weight", (h,)),)),
                   Owner(f"{q}.post_attention_layernorm", "rms_norm", (("weight", (h,)),))]
    return owners + [Owner(f"{p}.norm", "rms_norm", (("weight", (h,)),))]


@functools.lru_cache(maxsize=64)
def owners_of(n: Numbers) -> tuple[Owner, ...]:
    """The parameter owners of an architecture, in ``named_parameters()`` order, each tagged with its part.

    A tied ``lm_head`` owns no parameter of its own (its weight is ``embed_tokens.weight``)."""
    def tag(owners, part):
        return [replace(o, part=part) for o in owners]

    newline = [Owner("model", "tensor", (("image_newline", (n.llm[0],)),))] if n.anyres else []
    head = [] if n.tied else [_linear("lm_head", n.llm[0], n.llm[6], False)]
    return tuple(tag(newline, "image_newline") + tag(_vit(n), "vision_tower") + tag(_projector(n), "projector")
                 + tag(_llm(n), "language_model") + tag(head, "lm_head"))


def parameter_owners(model) -> tuple[Owner, ...]:
    """``owners_of(read_numbers(model))``: a name, alias, ``ModelSpec``, transformers config or module."""
    return owners_of(read_numbers(model))


def unused_vision_layers(n: Numbers) -> tuple[str, ...]:
    """Path prefixes of the ViT modules whose outputs LLaVA never reads: the encoder layers after the last feature
    layer, and ``post_layernorm``. ``hidden_states[k]`` is layer k-1's output (``hidden_states[0]`` the embeddings),
    so feature layer ``l`` uses layers ``0 .. (l mod (L+1)) - 1``."""
    layers = n.vit[2]
    last_used = max(i % (layers + 1) for i in n.feature_layers)
    return tuple(f"model.vision_tower.encoder.layers.{i}." for i in range(last_used, layers)) + (
        "model.vision_tower.post_layernorm",)

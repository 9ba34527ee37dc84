"""LLaVA architectures by name: configs, random-weight models and checkpoint loading.

Three generations share one skeleton (``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``):

    pixels -> CLIP ViT (hidden states of layer -2, CLS dropped) -> projector -> spliced into the LLM's
    text embeddings at the ``<image>`` positions -> LLM -> logits

How the versions differ (ViT input, projector, anyres) is tabled in ``specs.py``, which holds every model's numbers;
this module turns them into transformers configs and modules.

The ``tiny-*`` models keep every structural feature of their version at a size a laptop CPU trains in minutes:
14 px patches, feature layer -2 without CLS, the same projector kind, and for v1.6 the anyres grid pinpoints
scaled down by the same factor as the tile (336 -> 84 px).
"""

from __future__ import annotations

import copy
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

from .._compat import silence_known_warnings
from ..errors import UnknownModelError

from .specs import (  # noqa: F401 (re-exported: the names chapters use)
    ALIASES,
    KNOWN_MODELS,
    TINY_GRID_PINPOINTS,
    V16_GRID_PINPOINTS,
    ModelSpec,
    get_spec,
    hub_id,
    resolve_name,
)

silence_known_warnings()  # known library incompatibilities only; see llava_nb/_compat.py


def clip_config(v) -> CLIPVisionConfig:
    """The transformers config of a ``VisionSpec``."""
    return CLIPVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                            num_hidden_layers=v.num_hidden_layers, num_attention_heads=v.num_attention_heads,
                            image_size=v.image_size, patch_size=v.patch_size, projection_dim=v.projection_dim,
                            hidden_act=v.hidden_act)


def llm_config(t) -> PretrainedConfig:
    """The transformers config of a ``TextSpec`` (``LlamaConfig`` or ``MistralConfig``)."""
    kwargs = dict(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                  num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                  num_key_value_heads=t.num_key_value_heads, vocab_size=t.vocab_size,
                  max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
                  pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id)
    if t.model_type == "mistral":
        return MistralConfig(rope_theta=t.rope_theta, sliding_window=None, **kwargs)
    return LlamaConfig(**kwargs)


def spec_to_config(spec: ModelSpec) -> PretrainedConfig:
    """The transformers config of a ``ModelSpec`` (``specs.py`` holds the numbers; this only translates)."""
    common = dict(vision_config=clip_config(spec.vision_config), text_config=llm_config(spec.text_config),
                  image_token_index=spec.image_token_index, projector_hidden_act=spec.projector_hidden_act,
                  vision_feature_select_strategy=spec.vision_feature_select_strategy,
                  vision_feature_layer=spec.vision_feature_layer, image_seq_length=spec.image_seq_length)
    if spec.model_type == "llava_next":
        cfg = LlavaNextConfig(image_grid_pinpoints=[list(p) for p in spec.image_grid_pinpoints], **common)
    else:
        cfg = LlavaConfig(**common)
    cfg.mm_projector_type = spec.mm_projector_type
    cfg.llava_nb_name = spec.llava_nb_name
    return cfg


def get_config(name: str) -> PretrainedConfig:
    """A fresh transformers config for a known model name or alias.

    The config carries ``mm_projector_type`` (``"linear"`` or ``"mlp2x_gelu"``) and ``llava_nb_name``.
    """
    return spec_to_config(get_spec(name))


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
        from .local import resolve

        source = resolve(source)  # the folder in $LLAVA_NB_CHECKPOINTS where that is set
        config = get_config(canonical)
    cls = model_class(config)
    if dtype is not None:
        kwargs["dtype"] = dtype
    return cls.from_pretrained(source, use_safetensors=True, trust_remote_code=False, **kwargs)

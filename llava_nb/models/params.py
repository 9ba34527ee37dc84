"""Parameter counts from the real module structure (no hand-typed formulas).

A model is built on the meta device (nothing allocated) and its modules are walked. LLaVA splits into

    vision_tower    CLIP ViT (frozen in both of LLaVA's stages)
    projector       multi_modal_projector (Linear for v1; Linear-GELU-Linear for v1.5 / v1.6)
    image_newline   v1.6's learned row separator, one vector of the LLM's width
    language_model  embeddings, decoder blocks and final norm
    lm_head         the output projection to the vocabulary

``no_grad`` counts the vision-tower parameters that can never receive a gradient because LLaVA reads features
from layer -2: the last encoder layer and ``post_layernorm`` run, but their outputs are never used.

A LoRA adapter on a Linear of shape ``(out, in)`` adds ``A: (r, in)`` and ``B: (out, r)``, i.e. ``r (in + out)``
parameters.
"""

from __future__ import annotations

from torch import nn

from .architectures import as_config, build_model
from ..errors import LlavaNbError, UnknownMethodError

METHODS = ("stage1", "full", "lora", "qlora")

#: LLaVA's LoRA recipe (scripts/v1_5/finetune_lora.sh): r=128, alpha=256 on every LLM Linear but lm_head.
LLAVA_LORA_R = 128
LLAVA_LORA_ALPHA = 256


def _as_module(model) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    return build_model(as_config(model), device="meta")


def _numel(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def model_parts(model: nn.Module) -> dict[str, nn.Module | nn.Parameter | None]:
    """The named parts of a LLaVA model (or, for a plain causal LM, its body and head)."""
    inner = getattr(model, "model", model)
    if hasattr(inner, "multi_modal_projector"):
        return {
            "vision_tower": inner.vision_tower,
            "projector": inner.multi_modal_projector,
            "language_model": inner.language_model,
            "lm_head": model.get_output_embeddings(),
            "image_newline": getattr(inner, "image_newline", None),
        }
    return {"vision_tower": None, "projector": None, "language_model": inner,
            "lm_head": model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None,
            "image_newline": None}


def unused_vision_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Vision-tower modules whose outputs LLaVA never reads: encoder layers after ``vision_feature_layer``
    and ``post_layernorm``. Returned as ``(qualified name, module)``."""
    parts = model_parts(model)
    tower = parts["vision_tower"]
    if tower is None:
        return []
    cfg = model.config
    vision = getattr(tower, "vision_model", tower)  # transformers 5 flattened CLIPVisionModel.vision_model
    layers = vision.encoder.layers
    feature_layers = cfg.vision_feature_layer
    feature_layers = [feature_layers] if isinstance(feature_layers, int) else list(feature_layers)
    # hidden_states[i] is the output of layer i-1 (hidden_states[0] is the embeddings): N + 1 entries.
    n = len(layers)
    last_used = max(i % (n + 1) for i in feature_layers)  # index into hidden_states
    unused = [(f"encoder.layers.{i}", layers[i]) for i in range(last_used, n)]
    unused.append(("post_layernorm", vision.post_layernorm))
    return unused


def _linear_targets(language_model: nn.Module, targets) -> list[tuple[str, nn.Linear]]:
    linears = [(n, m) for n, m in language_model.named_modules() if isinstance(m, nn.Linear)]
    if targets is None:
        return linears
    targets = [targets] if isinstance(targets, str) else list(targets)
    chosen = [(n, m) for n, m in linears if n.split(".")[-1] in targets]
    missing = [t for t in targets if not any(n.split(".")[-1] == t for n, _ in linears)]
    if missing:
        available = sorted({n.split(".")[-1] for n, _ in linears})
        raise LlavaNbError(
            f"LoRA target(s) {missing} match no Linear of the language model; choose from {available}"
        )
    return chosen


def count_parameters(model, method: str = "full", lora_r: int = LLAVA_LORA_R, lora_alpha: int = LLAVA_LORA_ALPHA,
                     lora_targets=None) -> dict:
    """Count total and trainable parameters of a LLaVA model under a training method.

    ``model``: a name, alias, config or module. ``method``:

    * ``stage1``: projector (and v1.6's ``image_newline``) only: LLaVA's pretraining stage;
    * ``full``: stage 2, projector + LLM + lm_head with the ViT frozen;
    * ``lora`` / ``qlora``: LLaVA's recipe, adapters of rank ``lora_r`` on ``lora_targets`` (default: every
      Linear of the LLM; ``lm_head`` is outside the LLM body) plus the projector trained in full.

    Returns ``{"total", "trainable", "breakdown"}`` and, for LoRA methods, ``"adapter"``. ``total`` is the base
    architecture, without adapters. ``lora_alpha`` only scales the update; it is returned for the record.
    """
    if method not in METHODS:
        raise UnknownMethodError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method in ("lora", "qlora") and (not isinstance(lora_r, int) or lora_r <= 0):
        raise LlavaNbError(f"lora_r must be a positive integer, got {lora_r!r}")
    module = _as_module(model)
    parts = model_parts(module)
    breakdown = {k: (_numel(v) if isinstance(v, nn.Module) else (v.numel() if v is not None else 0))
                 for k, v in parts.items()}
    breakdown["no_grad"] = sum(_numel(m) for _, m in unused_vision_modules(module))
    total = sum(p.numel() for p in module.parameters())
    projector_side = breakdown["projector"] + breakdown["image_newline"]
    result = {"total": total, "breakdown": breakdown, "method": method}
    if method == "stage1":
        result["trainable"] = projector_side
    elif method == "full":
        result["trainable"] = projector_side + breakdown["language_model"] + breakdown["lm_head"]
    else:
        targets = _linear_targets(parts["language_model"], lora_targets)
        adapter = sum(lora_r * (lin.in_features + lin.out_features) for _, lin in targets)
        result.update(adapter=adapter, trainable=adapter + projector_side, lora_r=lora_r, lora_alpha=lora_alpha,
                      lora_targets=sorted({n.split(".")[-1] for n, _ in targets}))
    return result


def trainable_fraction(counts: dict) -> float:
    """Trainable parameters as a fraction of the base model's."""
    return counts["trainable"] / counts["total"]


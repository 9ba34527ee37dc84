"""Parameter counts: from a model's numbers (no torch), or by walking the modules of a built model.

LLaVA splits into

    vision_tower    CLIP ViT (frozen in both of LLaVA's stages)
    projector       multi_modal_projector (Linear for v1; Linear-GELU-Linear for v1.5 / v1.6)
    image_newline   v1.6's learned row separator, one vector of the LLM's width
    language_model  embeddings, decoder blocks and final norm
    lm_head         the output projection to the vocabulary (0 when tied to the embeddings, which count it)

``methods.counts.count_parameters`` counts what each training method trains from these parts. A name, alias,
``ModelSpec`` or transformers config is counted from ``layout.parameter_owners`` (every parameter
tensor derived from the config's numbers, checked against the meta-device modules by ``tests/test_shapes.py``); a
module (``nn.Module``) is walked. ``no_grad`` counts the vision-tower parameters that can never receive a gradient
because LLaVA reads features from layer -2: the last encoder layer and ``post_layernorm`` run, but their outputs
are never used.

A LoRA adapter on a Linear of shape ``(out, in)`` adds ``A: (r, in)`` and ``B: (out, r)``, i.e. ``r (in + out)``
parameters.
"""

from __future__ import annotations

import sys

from .layout import parameter_owners, read_numbers, unused_vision_layers
from ..errors import LlavaNbError

#: LLaVA's LoRA recipe (scripts/v1_5/finetune_lora.sh): r=128, alpha=256 on every LLM Linear but lm_head.
LLAVA_LORA_R = 128
LLAVA_LORA_ALPHA = 256

#: the breakdown's parts, in the order the tables print them
BREAKDOWN = ("vision_tower", "projector", "language_model", "lm_head", "image_newline")


def _is_module(model) -> bool:
    """Whether ``model`` is an ``nn.Module`` (only possible once torch is imported, so torch is never imported here)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def model_parts(model) -> dict:
    """The named parts of a LLaVA model (or, for a plain causal LM, its body and head): modules, the
    ``image_newline`` parameter, or None."""
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


def unused_vision_modules(model) -> list:
    """Vision-tower modules whose outputs LLaVA never reads: encoder layers after ``vision_feature_layer``
    and ``post_layernorm``. Returned as ``(qualified name, module)``."""
    tower = model_parts(model)["vision_tower"]
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


def _chosen_targets(leaves: list[str], targets) -> set[str] | None:
    """The Linear names LoRA adapts (None: all of ``leaves``); ``LlavaNbError`` if a target matches none."""
    if targets is None:
        return None
    targets = [targets] if isinstance(targets, str) else list(targets)
    missing = [t for t in targets if t not in leaves]
    if missing:
        raise LlavaNbError(f"LoRA target(s) {missing} match no Linear of the language model; choose from "
                           f"{sorted(set(leaves))}")
    return set(targets)


def _walk(module, lora_targets):
    """(breakdown, total, [(leaf name, in, out)] of the adapted Linears) of a built model."""
    from torch import nn

    parts = model_parts(module)
    seen = set()
    breakdown = {}
    for key in BREAKDOWN:
        part = parts[key]
        params = [] if part is None else [part] if isinstance(part, nn.Parameter) else list(part.parameters())
        breakdown[key] = sum(p.numel() for p in params if id(p) not in seen)  # a tied lm_head counts 0
        seen.update(id(p) for p in params)
    breakdown["no_grad"] = sum(p.numel() for _, m in unused_vision_modules(module) for p in m.parameters())
    linears = [(n.split(".")[-1], m) for n, m in parts["language_model"].named_modules() if isinstance(m, nn.Linear)]
    chosen = _chosen_targets([leaf for leaf, _ in linears], lora_targets)
    adapted = [(leaf, m.in_features, m.out_features) for leaf, m in linears if chosen is None or leaf in chosen]
    return breakdown, sum(p.numel() for p in module.parameters()), adapted


def _from_numbers(model, lora_targets):
    """(breakdown, total, adapted Linears) from ``layout.parameter_owners``: the same numbers as ``_walk``."""
    numbers = read_numbers(model)
    owners = parameter_owners(model)
    breakdown = dict.fromkeys(BREAKDOWN, 0)
    for o in owners:
        breakdown[o.part] += o.numel
    unused = unused_vision_layers(numbers)
    breakdown["no_grad"] = sum(o.numel for o in owners if o.path.startswith(unused))
    linears = [o for o in owners if o.part == "language_model" and o.kind == "linear"]
    chosen = _chosen_targets([o.leaf for o in linears], lora_targets)
    adapted = [(o.leaf, o.params[0][1][1], o.params[0][1][0]) for o in linears if chosen is None or o.leaf in chosen]
    return breakdown, sum(o.numel for o in owners), adapted


def parameter_breakdown(model, lora_targets=None) -> tuple[dict, int, list]:
    """(breakdown by part, total, [(leaf name, in, out)] of the Linears LoRA adapts) of a name, alias, spec or
    config (from its numbers, no torch) or of a built module (walked)."""
    walk = _walk if _is_module(model) else _from_numbers
    return walk(model, lora_targets)


def trainable_fraction(counts: dict) -> float:
    """Trainable parameters as a fraction of the base model's."""
    return counts["trainable"] / counts["total"]

"""One LLaVA forward pass, step by step, with the shape at every step.

``trace_forward`` calls the model's own submodules in the order ``LlavaForConditionalGeneration.forward`` does,
and records each intermediate tensor's shape. It runs on real tensors (a tiny model on CPU, where the chapter
checks its logits equal ``model(...)``'s) and on the meta device (a 7B model, shapes only, no memory).

    pixels (B, 3, H, W)
      -> patch embedding (B, d_vit, H/14, W/14)        a 14 x 14 conv with stride 14
      -> ViT hidden states L+1 x (B, 1 + n, d_vit)      embeddings + every layer, CLS first
      -> layer -2, CLS dropped (B, n, d_vit)
      -> projector (B, n, d_llm)
      -> spliced into text embeddings (1, T, d_llm)     masked_scatter at the <image> positions
      -> LLM (1, T, d_llm) -> lm_head -> logits (1, T, vocab)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Step:
    name: str
    shape: tuple
    note: str


def _vision_tower(inner):
    tower = inner.vision_tower
    return tower, getattr(tower, "vision_model", tower)


def trace_forward(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_sizes=None):
    """Run one forward pass stage by stage. Returns ``(steps, logits)``.

    ``input_ids``: (1, T) with the ``<image>`` tokens already expanded (as the processor returns them);
    ``pixel_values``: (B, 3, H, W) for v1/v1.5, (1, tiles, 3, H, W) for v1.6 with ``image_sizes`` [(h, w)].
    """
    cfg = model.config
    inner = model.model
    tower, vision = _vision_tower(inner)
    steps: list[Step] = []

    def add(name, tensor_or_shape, note):
        shape = tuple(tensor_or_shape.shape) if hasattr(tensor_or_shape, "shape") else tuple(tensor_or_shape)
        steps.append(Step(name, shape, note))

    is_next = cfg.model_type == "llava_next"
    weight = vision.embeddings.patch_embedding.weight
    pixel_values = pixel_values.to(device=weight.device, dtype=weight.dtype)  # e.g. fp32 pixels, bf16 model on GPU
    input_ids = input_ids.to(inner.get_input_embeddings().weight.device)
    add("pixels", pixel_values, "normalised RGB" + (": (images, tiles incl. global view, 3, H, W)" if is_next else ""))
    pixels = pixel_values.flatten(0, 1) if is_next else pixel_values  # (N_views, 3, H, W)
    patch = cfg.vision_config.patch_size
    patches = vision.embeddings.patch_embedding(pixels)  # (N_views, d_vit, H/p, W/p)
    add("patch embedding", patches, f"{patch}x{patch} conv, stride {patch}: one vector per patch")
    vit = tower(pixels, output_hidden_states=True)
    hidden = vit.hidden_states  # L + 1 tensors of (N_views, 1 + n, d_vit)
    add("ViT hidden states", (len(hidden), *hidden[0].shape), "embeddings + each layer; position 0 is CLS")
    feats = hidden[cfg.vision_feature_layer]
    if cfg.vision_feature_select_strategy == "default":
        feats = feats[:, 1:]  # drop CLS: (N_views, n, d_vit)
    add(f"layer {cfg.vision_feature_layer}, CLS dropped", feats, "the features LLaVA uses")
    proj = inner.multi_modal_projector(feats)  # (N_views, n, d_llm)
    add("projector", proj, f"{getattr(cfg, 'mm_projector_type', 'mlp2x_gelu')}: ViT width -> LLM width")
    if is_next:
        # anyres: global view first, then the tile grid with padding cropped and image_newline after each row.
        sizes = torch.as_tensor(image_sizes)
        per_image = [proj.shape[0] // sizes.shape[0]] * sizes.shape[0]
        packed, _ = inner.pack_image_features(
            list(torch.split(proj, per_image)), sizes, cfg.vision_feature_select_strategy, inner.image_newline
        )
        image_features = torch.cat(packed, dim=0)  # (tokens, d_llm)
        add("anyres packing", image_features, "global view first, then the unpadded tile grid with one newline per row")
    else:
        image_features = proj.reshape(-1, proj.shape[-1])  # (N_views * n, d_llm)
    text = inner.get_input_embeddings()(input_ids)  # (1, T, d_llm)
    add("text embeddings", text, "input ids -> embedding table (image positions hold <image>'s row)")
    mask = (input_ids == cfg.image_token_id).unsqueeze(-1).expand_as(text)
    spliced = text.masked_scatter(mask, image_features.to(text.dtype))  # (1, T, d_llm)
    add("spliced", spliced, "image features written over the <image> positions")
    out = inner.language_model(inputs_embeds=spliced)
    add("LLM", out.last_hidden_state, f"{cfg.text_config.num_hidden_layers} decoder blocks + final norm")
    logits = model.lm_head(out.last_hidden_state)  # (1, T, vocab)
    add("logits", logits, "next-token scores over the vocabulary")
    return steps, logits


def meta_inputs(model, height: int = None, width: int = None, prompt_tokens: int = 32):
    """Meta-device inputs for ``trace_forward`` on a full-size model: one image and ``prompt_tokens`` of text."""
    from .image_tokens import anyres_layout, count_image_tokens

    cfg = model.config
    side = cfg.vision_config.image_size
    height, width = height or side, width or side
    n_image = count_image_tokens(cfg, height, width)
    input_ids = torch.full((1, prompt_tokens + n_image), 0, dtype=torch.long)
    input_ids[0, 1:1 + n_image] = cfg.image_token_id
    if cfg.model_type == "llava_next":
        tiles = anyres_layout(cfg, height, width).num_tiles + 1
        pixel_values = torch.empty(1, tiles, 3, side, side, device="meta")
        return input_ids.to("meta"), pixel_values, [(height, width)]
    return input_ids.to("meta"), torch.empty(1, 3, side, side, device="meta"), None

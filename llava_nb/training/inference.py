"""Answering a question about an image with a trained (or public) LLaVA checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import LlavaNbError


def answer(model, image, prompt: str, template: str | None = None, max_new_tokens: int = 32) -> str:
    """Greedy answer of ``model`` (a checkpoint folder, Hub id, or loaded model with ``.tokenizer``/``.image_processor``
    attributes) to ``prompt`` about ``image`` (a path or PIL image)."""
    from ..data.dataset import open_image
    from ..models.image_tokens import count_image_tokens
    from ..models.templates import tokenize_conversation
    from .loading import default_template, load_for_training

    if isinstance(model, (str, Path)):
        net, tokenizer, image_processor = load_for_training(str(model), stage=2)
    else:
        net, tokenizer, image_processor = model, model.tokenizer, model.image_processor
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise LlavaNbError(f"no image file at {image}")
        image = open_image(image)
    template = template or default_template(net.config, stage=2)
    text = prompt if "<image>" in prompt else f"<image>\n{prompt}"
    n = count_image_tokens(net.config, image.height, image.width)
    turns = [{"from": "human", "value": text}, {"from": "gpt", "value": "-"}]
    ids = tokenize_conversation(tokenizer, turns, template, n, for_generation=True).input_ids
    device = next(net.parameters()).device
    pixels = image_processor(image, return_tensors="pt")
    inputs = {"input_ids": torch.tensor([ids], device=device),
              "pixel_values": pixels["pixel_values"].to(device, next(net.parameters()).dtype)}
    if "image_sizes" in pixels:
        inputs["image_sizes"] = pixels["image_sizes"].to(device)
    net.eval()
    with torch.no_grad():
        out = net.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()

"""The tiny ViT's pretraining: CLIP's symmetric contrastive loss on synthetic scenes and their captions, and a probe
of what its patch features know about position (see ``pretrain``'s docstring for the whole tiny world)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .pretrain import VISION_DIR, VISION_SIDE, _fit, _write_log


def _normalise(images: list) -> torch.Tensor:
    """PIL images of VISION_SIDE px -> CLIP-normalised (B, 3, S, S), as the image processor does for that size."""
    from ..models.processors import CLIP_MEAN, CLIP_STD

    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images]))  # (B, S, S, 3)
    x = (x - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    return x.permute(0, 3, 1, 2).contiguous()


def scene_batch(rng: random.Random, n: int, side: int = VISION_SIDE):
    """``n`` synthetic images with distinct captions: (pixels (n, 3, side, side), captions)."""
    from ..data.synthetic import caption, draw_scene, random_scene

    images, captions = [], []
    while len(images) < n:
        scene = random_scene(rng)
        text = caption(scene)
        if text in captions:  # duplicate captions would be contradictory contrastive targets
            continue
        images.append(draw_scene(scene, (side, side), rng))
        captions.append(text)
    return _normalise(images), captions


def sincos_position_embeddings(grid: int, dim: int) -> torch.Tensor:
    """(1 + grid*grid, dim) 2-D sine-cosine position embeddings (as in MAE), CLS row zero.

    Half of the channels encode the row, half the column, each with sines and cosines of geometrically spaced
    frequencies, so every patch token starts with a distinct, smooth signature of where it is.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                                indexing="ij")
    parts = []
    for coord in (rows.flatten(), cols.flatten()):
        angle = coord[:, None] * omega[None]  # (grid*grid, dim/4)
        parts += [torch.sin(angle), torch.cos(angle)]
    return torch.cat([torch.zeros(1, dim), torch.cat(parts, dim=1)])


class ContrastivePair(nn.Module):
    """A CLIP: vision tower + text tower, each projected to a shared space, with a learned temperature.

    The vision tower's position embeddings start from 2-D sine-cosine values instead of CLIP's N(0, 0.02): at
    this size, with small random position embeddings, the patch tokens of layer -2 come out of contrastive
    training carrying almost nothing about *where* they are (a linear probe finds their quadrant at chance), so
    the LLM cannot answer "what is at the top left?". Real CLIP ViT-L's patch tokens do encode position.
    """

    def __init__(self, vocab_size: int, dim: int = 64):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionModel

        from ..models.architectures import clip_config
        from ..models.specs import tiny_vit

        self.vision = CLIPVisionModel(clip_config(tiny_vit(VISION_SIDE)))
        embeddings = getattr(self.vision, "vision_model", self.vision).embeddings
        grid = VISION_SIDE // embeddings.patch_size
        with torch.no_grad():
            embeddings.position_embedding.weight.copy_(sincos_position_embeddings(grid, embeddings.embed_dim))
        self.text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=256,
                                                 num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                                                 pad_token_id=3, bos_token_id=1, eos_token_id=2))
        width = self.vision.config.hidden_size
        self.vision_proj = nn.Linear(width, dim, bias=False)
        self.text_proj = nn.Linear(64, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def forward(self, pixels, input_ids, attention_mask):
        img = self.vision_proj(self.vision(pixel_values=pixels).pooler_output)  # (B, dim), CLS after post-LN
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, 64)
        last = attention_mask.sum(1) - 1  # the final (end-of-text) token of each caption
        txt = self.text_proj(hidden[torch.arange(hidden.shape[0]), last])  # (B, dim)
        img, txt = nn.functional.normalize(img, dim=-1), nn.functional.normalize(txt, dim=-1)
        logits = self.logit_scale.exp().clamp(max=100) * img @ txt.T  # (B, B)
        target = torch.arange(len(logits))
        loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
        accuracy = (logits.argmax(1) == target).float().mean()
        return loss, accuracy


def position_probe(vision=None, n_images: int = 800, layer: int = -2, steps: int = 300, seed: int = 0) -> dict:
    """How well linear probes read *where* things are from a ViT's patch features (held-out accuracy, last 20%).

    ``own_quadrant``: a patch's feature (64,) -> which quadrant the patch lies in (4 classes), the signature that
    lets the LLM's attention pick out "the top left". ``occupied``: the mean feature of a quadrant's 3 x 3 patches
    -> whether a shape is there (one shared probe for the 4 quadrants). ``vision`` defaults to the committed tiny
    CLIP ViT; chance is 0.25 and about 0.5 (the share of empty quadrants).
    """
    from transformers import CLIPVisionModel

    from ..data.synthetic import POSITIONS, draw_scene, random_scene

    torch.manual_seed(seed)
    vision = vision if vision is not None else CLIPVisionModel.from_pretrained(VISION_DIR)
    rng = random.Random(f"{seed}-probe")
    scenes = [random_scene(rng) for _ in range(n_images)]
    pixels = _normalise([draw_scene(s, (VISION_SIDE, VISION_SIDE), rng) for s in scenes])
    with torch.no_grad():
        patches = vision.eval()(pixel_values=pixels, output_hidden_states=True).hidden_states[layer][:, 1:]  # (N, P, D)
    side = int(patches.shape[1] ** 0.5)
    half = side // 2
    grid = patches.reshape(n_images, side, side, -1)  # (N, side, side, D)
    quadrant = torch.tensor([(r // half) * 2 + c // half for r in range(side) for c in range(side)])  # (P,)
    quads = torch.stack([grid[:, r:r + half, c:c + half].mean((1, 2)) for r in (0, half) for c in (0, half)], 1)
    occupied = torch.tensor([[any(o.position == p for o in s) for p in POSITIONS] for s in scenes], dtype=torch.long)

    def probe(x, y, classes):  # x (M, D), y (M,): a linear classifier fitted on 80%, scored on the rest
        cut = int(0.8 * len(x))
        mu, sd = x[:cut].mean(0), x[:cut].std(0) + 1e-5
        x = (x - mu) / sd
        lin = nn.Linear(x.shape[1], classes)
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(lin(x[:cut]), y[:cut])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (lin(x[cut:]).argmax(-1) == y[cut:]).float().mean().item()

    dim = patches.shape[-1]
    return {"own_quadrant": probe(patches.reshape(-1, dim), quadrant.repeat(n_images), 4),
            "occupied": probe(quads.reshape(-1, dim), occupied.reshape(-1), 2)}


def pretrain_vision(out_dir: Path | str = VISION_DIR, steps: int = 300, batch_size: int = 96, lr: float = 2e-3,
                    seed: int = 0, log_every: int = 10) -> dict:
    """Train the tiny ViT contrastively; save its ``CLIPVisionModel`` and the training log to ``out_dir``."""
    from ..models.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    rng = random.Random(f"{seed}-clip")
    tok = load_tokenizer()
    model = ContrastivePair(len(tok))

    def step_loss():
        pixels, captions = scene_batch(rng, batch_size)
        enc = tok([c + tok.eos_token for c in captions], padding=True, return_tensors="pt")
        loss, accuracy = model(pixels, enc["input_ids"], enc["attention_mask"])
        return loss, {"batch_accuracy": accuracy}

    log, seconds = _fit(model, step_loss, steps, lr, log_every)
    out = Path(out_dir)
    model.vision.save_pretrained(out)
    return _write_log(out, log, seconds, steps=steps, batch_size=batch_size, lr=lr, seed=seed)

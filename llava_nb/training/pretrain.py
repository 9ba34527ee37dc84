"""The tiny world's pretrained parts: a CLIP-style ViT and a small Llama, like the real LLaVA starts from.

LLaVA never trains its vision encoder or language model from scratch: it starts from OpenAI's CLIP ViT-L/14
(contrastive image-text pretraining) and from Vicuna (a Llama fine-tuned for chat). The tiny models get the same
start, at a laptop's scale:

* ``pretrain_vision``: a tiny ``CLIPVisionModel`` (84 px, 14 px patches) and a tiny text encoder trained with CLIP's
  symmetric contrastive loss on synthetic images and their captions; only the vision tower is kept.

      logits = exp(t) * normalize(f_img) @ normalize(f_txt).T          # (B, B)
      loss = (CE(logits, arange(B)) + CE(logits.T, arange(B))) / 2

* ``pretrain_language``: a tiny ``LlamaForCausalLM`` trained with next-token loss on the synthetic text rendered
  in the conversation templates (no images), so it knows the vocabulary and the chat format.

Both are saved as safetensors under ``data/pretrained`` with their training logs. ``ensure_pretrained_parts``
loads them if present and trains them otherwise; ``python -m llava_nb regenerate parts`` retrains them.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..paths import DATA_DIR

import os

#: Where the pretrained parts live; ``LLAVA_NB_PRETRAINED`` redirects it (the pipeline benchmark trains them afresh
#: in a temporary folder).
PRETRAINED_DIR = Path(os.environ.get("LLAVA_NB_PRETRAINED", DATA_DIR / "pretrained"))
VISION_DIR = PRETRAINED_DIR / "tiny-clip-vit"
LANGUAGE_DIR = PRETRAINED_DIR / "tiny-llama"
VISION_SIDE = 84


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


def _fit(model: nn.Module, step_loss, steps: int, lr: float, log_every: int) -> tuple[list, float]:
    """AdamW (weight decay 0.05) with a cosine schedule after 10% warm-up. ``step_loss()`` draws a fresh batch and
    returns ``(loss, {metric: tensor})``. Returns the log (every ``log_every`` steps and the last) and the seconds."""
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = get_cosine_schedule_with_warmup(opt, steps // 10, steps)
    log, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        loss, metrics = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            log.append({"step": step, "loss": round(loss.item(), 4),
                        **{k: round(v.item(), 4) for k, v in metrics.items()}})
    return log, time.perf_counter() - start


def _write_log(out: Path, log: list, seconds: float, **settings) -> dict:
    meta = {**settings, "seconds": round(seconds, 1), "log": log}
    (out / "training_log.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


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


def _text_batch(rng: random.Random, tok, n: int, context_prob: float = 0.0) -> dict:
    """``n`` synthetic conversations rendered in a random template, without images, padded: next-token targets.

    With probability ``context_prob`` a question-answer conversation starts with the scene's caption where the
    image would be, so that the answers follow from the text before them."""
    from ..data.synthetic import QUESTION_TYPES, SHORT_ANSWER_PROMPT, caption, question, random_scene
    from ..models.templates import tokenize_conversation

    seqs = []
    for _ in range(n):
        scene = random_scene(rng)
        if rng.random() < 0.25:
            turns = [{"from": "human", "value": "Describe the image briefly."}, {"from": "gpt", "value": caption(scene)}]
        else:
            turns = []
            context = context_prob > 0 and rng.random() < context_prob
            for t in range(rng.choice((1, 2, 3))):
                q, short, sentence = question(scene, rng.choice(QUESTION_TYPES), rng)
                if context and t == 0:
                    q = f"{caption(scene)}\n{q}"
                short_form = rng.random() < 0.5
                turns += [{"from": "human", "value": f"{q}\n{SHORT_ANSWER_PROMPT}" if short_form else q},
                          {"from": "gpt", "value": short if short_form else sentence}]
        template = rng.choice(("vicuna_v1", "mistral_instruct"))
        seqs.append(torch.tensor(tokenize_conversation(tok, turns, template).input_ids))
    ids = nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=tok.pad_token_id)
    mask = nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True)
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pretrain_language(out_dir: Path | str = LANGUAGE_DIR, steps: int = 300, batch_size: int = 32, lr: float = 3e-3,
                      seed: int = 0, log_every: int = 10, context_prob: float = 0.0) -> dict:
    """Train the tiny Llama on synthetic chat text; save it (safetensors) and the training log to ``out_dir``."""
    from transformers import LlamaForCausalLM

    from ..models.architectures import llm_config
    from ..models.specs import tiny_llama
    from ..models.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    rng = random.Random(f"{seed}-text")
    tok = load_tokenizer()
    model = LlamaForCausalLM(llm_config(tiny_llama(len(tok))))
    log, seconds = _fit(model, lambda: (model(**_text_batch(rng, tok, batch_size, context_prob)).loss, {}), steps, lr, log_every)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return _write_log(out, log, seconds, steps=steps, batch_size=batch_size, lr=lr, seed=seed)


def ensure_pretrained_parts(retrain: bool = False) -> tuple[Path, Path]:
    """Paths of the pretrained ViT and LLM; trains whichever is missing (or both with ``retrain``), each once even
    when several processes ask at once (``paths.build_once``)."""
    from ..paths import build_once

    for function, folder in (("pretrain_vision", VISION_DIR), ("pretrain_language", LANGUAGE_DIR)):
        build_once(folder, "model.safetensors", lambda tmp, f=function: _train_in_child(f, out_dir=str(tmp)),
                   rebuild=retrain)
    return VISION_DIR, LANGUAGE_DIR


def _train_in_child(function: str, **kwargs) -> None:
    """Run ``function(**kwargs)`` of this module in a child Python process (same environment, torch's default
    threads; ``kwargs`` as Python literals).

    Training here would import ``transformers.optimization``, which imports peft, which imports bitsandbytes; after
    that, ``accelerate.notebook_launcher`` refuses to fork ("Libraries known to initialize device upon import have
    been imported already"), so ``train()`` would start its workers as fresh processes, about 5 s more per stage
    on a CPU, and a notebook's kernel would stay that way. The child keeps this process as it was."""
    import subprocess
    import sys

    call = f"{function}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    child = subprocess.run([sys.executable, "-c", f"from llava_nb.training.pretrain import {function}; {call}"],
                           capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"{function}() failed in its child process:\n{child.stderr[-3000:]}")


def _resize_position_embeddings(weight: torch.Tensor, side: int) -> torch.Tensor:
    """(1 + n*n, d) CLIP position embeddings -> (1 + side*side, d): CLS kept, the patch grid resized bicubically."""
    cls, grid = weight[:1], weight[1:]
    n = int(round(grid.shape[0] ** 0.5))
    grid = grid.reshape(1, n, n, -1).permute(0, 3, 1, 2)  # (1, d, n, n)
    grid = nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(side * side, -1)])


def load_pretrained_parts(model) -> None:
    """Copy the pretrained tiny ViT and LLM into a tiny LLaVA (in place). The projector stays random.

    v1's tiny ViT sees 56 px instead of 84: its position embeddings are resized, as one does to run CLIP at
    another resolution.
    """
    with zero3_gathered(model):
        _load_parts(model)


def zero3_gathered(module):
    """A context in which DeepSpeed ZeRO-3's partitioned parameters are whole (rank 0's changes kept), or nothing.

    The ZeRO-3 trap: a model built while a ZeRO-3 config is active (transformers then builds it under
    ``deepspeed.zero.Init``) holds empty ``torch.Size([0])`` shards; ``load_state_dict`` on it fails with size
    mismatches, or with ``strict=False`` silently loads nothing. ``GatheredParameters`` gathers them first.
    """
    import contextlib

    params = list(module.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def _load_parts(model) -> None:
    from safetensors.torch import load_file

    vision_dir, language_dir = ensure_pretrained_parts()
    vit = load_file(vision_dir / "model.safetensors")
    vit = {k.removeprefix("vision_model."): v for k, v in vit.items()}
    tower = model.model.vision_tower
    key = "embeddings.position_embedding.weight"
    target = tower.state_dict()[key]
    if vit[key].shape != target.shape:
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        vit[key] = _resize_position_embeddings(vit[key], side)
    vit.pop("embeddings.position_ids", None)
    tower.load_state_dict(vit, strict=True)
    lm = load_file(language_dir / "model.safetensors")
    model.lm_head.load_state_dict({"weight": lm.pop("lm_head.weight")})
    model.model.language_model.load_state_dict({k.removeprefix("model."): v for k, v in lm.items()}, strict=True)

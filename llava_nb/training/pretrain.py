"""The tiny world's pretrained parts: a CLIP-style ViT and a small Llama, like the real LLaVA starts from.

LLaVA never trains its vision encoder or language model from scratch: it starts from OpenAI's CLIP ViT-L/14
(contrastive image-text pretraining) and from Vicuna (a Llama fine-tuned for chat). The tiny models get the same
start, at a laptop's scale:

* ``tiny_vit.pretrain_vision``: a tiny ``CLIPVisionModel`` (84 px, 14 px patches) and a tiny text encoder trained with CLIP's
  symmetric contrastive loss on synthetic images and their captions; only the vision tower is kept.

      logits = exp(t) * normalize(f_img) @ normalize(f_txt).T          # (B, B)
      loss = (CE(logits, arange(B)) + CE(logits.T, arange(B))) / 2

* ``tiny_llm.pretrain_language``: a tiny ``LlamaForCausalLM`` trained with next-token loss on the synthetic text rendered
  in the conversation templates (no images), so it knows the vocabulary and the chat format.

Both are saved as safetensors under ``data/pretrained`` with their training logs. ``ensure_pretrained_parts``
loads them if present and trains them otherwise; ``python -m llava_nb regenerate parts`` retrains them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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

    module = {"pretrain_vision": "tiny_vit", "pretrain_language": "tiny_llm"}[function]
    call = f"{function}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    child = subprocess.run([sys.executable, "-c", f"from llava_nb.training.{module} import {function}; {call}"],
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

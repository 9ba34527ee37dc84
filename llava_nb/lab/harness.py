"""What the per-rank harnesses share (``measure``, ``fsdp_demo``, ``zero3_trap``, ``hf_trainer``): synthetic batches of
an exact length, the library versions a record carries, starting fresh processes under ``torchrun``, and gathering
every rank's records."""

from __future__ import annotations

import os
import platform
import sys

import torch


def synthetic_batch(config, micro_batch: int, seq_len: int, device, dtype=torch.float32, image_size=None,
                    seed: int = 0) -> dict:
    """A training batch of ``micro_batch`` samples of exactly ``seq_len`` tokens, one image each.

    The image's tokens (576 for LLaVA-1.5 at 336 px; for v1.6 from ``image_size``) count inside ``seq_len``; the
    rest are random text ids, all supervised."""
    from ..errors import InvalidSizeError
    from ..models.image_tokens import count_image_tokens

    g = torch.Generator().manual_seed(seed)
    vision = config.vision_config
    h, w = image_size or (vision.image_size, vision.image_size)
    n_img = count_image_tokens(config, h, w)
    if hasattr(config, "image_grid_pinpoints"):
        from ..models.image_tokens import anyres_layout

        n_tiles = 1 + anyres_layout(config, h, w).num_tiles  # the base image + the grid's tiles
        pixel = torch.randn(micro_batch, n_tiles, 3, vision.image_size, vision.image_size, generator=g)
        extra = {"image_sizes": torch.tensor([[h, w]] * micro_batch)}
    else:
        pixel = torch.randn(micro_batch, 3, vision.image_size, vision.image_size, generator=g)
        extra = {}
    if seq_len <= n_img + 1:
        raise InvalidSizeError(f"seq_len={seq_len} leaves no text after {n_img} image tokens; use seq_len > {n_img + 1}")
    vocab = config.text_config.vocab_size
    text = torch.randint(3, min(vocab, 32000) - 1, (micro_batch, seq_len - n_img), generator=g)
    text[text == config.image_token_id] = 3
    image = torch.full((micro_batch, n_img), config.image_token_id)
    ids = torch.cat([text[:, :1], image, text[:, 1:]], dim=1)  # (B, seq_len): BOS-ish token, image, text
    labels = ids.masked_fill(ids == config.image_token_id, -100)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "pixel_values": pixel, **extra}
    return {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}


def versions() -> dict:
    import accelerate
    import peft
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "accelerate": accelerate.__version__, "peft": peft.__version__}
    for name in ("deepspeed", "bitsandbytes"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        out["gpu_total_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        out["cuda"] = torch.version.cuda
    return out


def gather(records: list[dict]) -> list[dict]:
    """Every rank's records, merged per point: ``per_rank`` lists, and steady/peak as the maximum over ranks."""
    if not torch.distributed.is_initialized():
        everyone = [records]
    else:
        everyone = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, records)
    merged = []
    for i, rec in enumerate(everyone[0]):
        ranks = [r[i] for r in everyone]
        out = {k: v for k, v in rec.items() if k not in ("holdings", "steady", "peak", "error")}
        out["oom"] = any(r["oom"] for r in ranks)
        out["errors"] = sorted({r["error"] for r in ranks if r.get("error")})
        out["per_rank"] = [{k: r.get(k) for k in ("holdings", "steady", "peak")} for r in ranks]
        if all("peak" in r for r in ranks) and not out["oom"]:
            out["steady"] = max(r["steady"] for r in ranks)
            out["peak"] = max(r["peak"] for r in ranks)
        merged.append(out)
    return merged


def torchrun(module_args: list[str], processes: int = 2, timeout: int = 600):
    """Run ``python -m <module_args>`` in ``processes`` fresh processes under ``torchrun --standalone`` (a free port;
    one thread each on a CPU). A worker that aborts (SIGABRT, seen now and then inside the CPU collectives of
    gloo/DeepSpeed) gets one retry; a second failure raises with the processes' output."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), "-m",
           *module_args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for attempt in (1, 2):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0 or "SIGABRT" not in proc.stderr:
            break
    if proc.returncode:
        raise RuntimeError(f"{module_args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc

"""What a run measures about itself: each rank's memory from the CUDA allocator and the tokens it processed.

    peak   = torch.cuda.max_memory_allocated(), reset after set-up, so it covers every training step
    steady = torch.cuda.memory_allocated() after the last step (weights, optimizer states, buffers kept)
    setup  = torch.cuda.memory_allocated() before the first step (the model as set up and wrapped, before any
             gradient or optimizer state exists)
    tokens per second = tokens of every rank (attention mask) / wall time of the steps after the first
    MFU    = model FLOPs of those tokens (``models.flops``: from sum(T) and sum(T^2) per sequence) / time / peak

These are what ``estimate_memory`` predicts as ``peak_gib`` and ``steady_gib`` (the busiest rank: the maximum).
On a CPU only the tokens are counted.
"""

from __future__ import annotations

import time

import torch

GIB = 2**30


class Meter:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.tokens = self.first_tokens = 0
        self.tokens_squared = self.first_squared = 0  # sum of each sequence's length squared (attention FLOPs)
        self.max_seq_len = 0
        self.start = self.after_first = None
        self.setup_gib = None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
            self.setup_gib = torch.cuda.memory_allocated(device) / GIB
        self.device = device

    def batch(self, batch: dict) -> None:
        """Count one micro-batch's real (unpadded) tokens."""
        mask = batch.get("attention_mask")
        if mask is not None:
            lengths = mask.sum(-1)
            self.tokens += int(lengths.sum())
            self.tokens_squared += int((lengths.long() ** 2).sum())
            self.max_seq_len = max(self.max_seq_len, mask.shape[-1])
        if self.start is None:
            self.start = time.perf_counter()

    def step_done(self) -> None:
        """After an optimizer step: the first one's time (compilation, allocation) is left out of the speed."""
        if self.after_first is None:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.after_first, self.first_tokens = time.perf_counter(), self.tokens
            self.first_squared = self.tokens_squared

    def read(self, world: int) -> dict:
        """Every rank's numbers (a collective: every rank calls it)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        mine = {"peak_gib": torch.cuda.max_memory_allocated(self.device) / GIB if self.cuda else None,
                "steady_gib": torch.cuda.memory_allocated(self.device) / GIB if self.cuda else None,
                "setup_gib": self.setup_gib, "tokens": self.tokens - self.first_tokens,
                "tokens_squared": self.tokens_squared - self.first_squared,
                "seconds": now - (self.after_first or now), "max_seq_len": self.max_seq_len}
        ranks = [mine]
        if world > 1 and torch.distributed.is_initialized():
            ranks = [None] * world
            torch.distributed.all_gather_object(ranks, mine)
        seconds = max(r["seconds"] for r in ranks)
        out = {"tokens_per_s": round(sum(r["tokens"] for r in ranks) / seconds, 1) if seconds else None,
               "max_seq_len": max(r["max_seq_len"] for r in ranks), "seconds": round(seconds, 3),
               "tokens": sum(r["tokens"] for r in ranks),
               "tokens_squared": sum(r["tokens_squared"] for r in ranks)}
        if self.cuda:
            out.update(peak_gib=[round(r["peak_gib"], 3) for r in ranks],
                       steady_gib=[round(r["steady_gib"], 3) for r in ranks],
                       setup_gib=[round(r["setup_gib"], 3) for r in ranks],
                       device_name=torch.cuda.get_device_name(self.device))
        return out

"""What a run measures about itself: each rank's memory from the CUDA allocator and the tokens it processed.

    peak   = torch.cuda.max_memory_allocated(), reset after set-up, so it covers every training step
    steady = torch.cuda.memory_allocated() after the last step (weights, optimizer states, buffers kept)
    tokens per second = tokens of every rank (attention mask) / wall time of the steps after the first

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
        self.max_seq_len = 0
        self.start = self.after_first = None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device

    def batch(self, batch: dict) -> None:
        """Count one micro-batch's real (unpadded) tokens."""
        mask = batch.get("attention_mask")
        if mask is not None:
            self.tokens += int(mask.sum())
            self.max_seq_len = max(self.max_seq_len, mask.shape[-1])
        if self.start is None:
            self.start = time.perf_counter()

    def step_done(self) -> None:
        """After an optimizer step: the first one's time (compilation, allocation) is left out of the speed."""
        if self.after_first is None:
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.after_first, self.first_tokens = time.perf_counter(), self.tokens

    def read(self, world: int) -> dict:
        """Every rank's numbers (a collective: every rank calls it)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        mine = {"peak_gib": torch.cuda.max_memory_allocated(self.device) / GIB if self.cuda else None,
                "steady_gib": torch.cuda.memory_allocated(self.device) / GIB if self.cuda else None,
                "tokens": self.tokens - self.first_tokens, "seconds": now - (self.after_first or now),
                "max_seq_len": self.max_seq_len}
        ranks = [mine]
        if world > 1 and torch.distributed.is_initialized():
            ranks = [None] * world
            torch.distributed.all_gather_object(ranks, mine)
        seconds = max(r["seconds"] for r in ranks)
        out = {"tokens_per_s": round(sum(r["tokens"] for r in ranks) / seconds, 1) if seconds else None,
               "max_seq_len": max(r["max_seq_len"] for r in ranks)}
        if self.cuda:
            out.update(peak_gib=[round(r["peak_gib"], 3) for r in ranks],
                       steady_gib=[round(r["steady_gib"], 3) for r in ranks])
        return out

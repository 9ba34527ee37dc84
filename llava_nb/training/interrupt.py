"""Stopping a run cleanly on Ctrl-C or SIGTERM.

A terminal's Ctrl-C reaches every process of its foreground group: the launching process, the launcher and the
workers. ``torchrun``, ``accelerate launch`` and ``notebook_launcher`` also pass the signal on to their workers,
then give them 30 seconds before killing them. A worker does not stop where the signal finds it. It notes the
signal (``StopRequest``), and at the next optimizer-step boundary the processes take the maximum of their notes
(an all-reduce of one number). So all of them stop after the same step, whichever got the signal first. The run
then saves a checkpoint of that step (when it saves checkpoints at all, ``save_every``) and ends with
``"interrupted": true`` in its result. Re-running the same command continues from that checkpoint.

A checkpoint is written as ``step_N.partial`` and renamed only when complete (``output_dir.finish_checkpoint``).
A process killed mid-save, after the launcher's 30 seconds, therefore leaves the previous checkpoint as the
latest.
"""

from __future__ import annotations

import signal
import threading

import torch


class StopRequest:
    """Notes SIGINT and SIGTERM while a run trains and until its result is written (in the main thread; elsewhere
    Python cannot catch signals), and restores the previous handlers afterwards."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _note(self, signum, frame) -> None:
        # The launcher passes the terminal's signal on, so one Ctrl-C can arrive twice: each one only takes note.
        self.requested = True

    def agreed(self, accelerator) -> bool:
        """Whether any process was asked to stop (every process calls this at the same step)."""
        if accelerator.num_processes == 1 or not torch.distributed.is_initialized():
            return self.requested
        flag = torch.tensor([float(self.requested)], device=accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

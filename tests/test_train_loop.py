"""The training loop keeps no step's graph: not into the next step's forward (the peak), nor into what ``Meter.read``
reports as steady memory (the run's state only)."""

import gc
import types
import weakref

import torch
from torch import nn

from llava_nb.training import meter, worker


class LeafModel(nn.Module):
    """Makes its embedding output a leaf that requires grad, as transformers' and peft's input-require-grad hooks
    do for a frozen embedding under LoRA; the graph's AccumulateGrad node holds that leaf (and its .grad) for as
    long as anything references the loss."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4).requires_grad_(False)
        self.head = nn.Linear(4, 1)
        self.leaves, self.config = [], None
        self.earlier_alive = []  # at each forward: is an earlier step's leaf still alive (it would add to the peak)

    def forward(self, input_ids, attention_mask):
        gc.collect()
        self.earlier_alive.append(any(ref() is not None for ref in self.leaves))
        leaf = self.embed(input_ids).requires_grad_(True)  # (B, T, 4)
        self.leaves.append(weakref.ref(leaf))
        return types.SimpleNamespace(loss=self.head(leaf).mean())


class Loader(list):
    def set_epoch(self, epoch):
        pass


def test_no_graph_or_batch_outlives_the_steps_it_was_made_in(monkeypatch, tmp_path):
    from accelerate import Accelerator

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = LeafModel()
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    batches = Loader({"input_ids": torch.randint(0, 10, (2, 3)), "attention_mask": torch.ones(2, 3)} for _ in range(3))
    alive_at_read = []

    def read(self, world):
        gc.collect()
        alive_at_read.extend(ref() is not None for ref in model.leaves)
        return {}

    monkeypatch.setattr(meter.Meter, "read", read)
    monkeypatch.setattr("llava_nb.data.dataset.check_batch", lambda batch, config: None)
    cfg = types.SimpleNamespace(max_grad_norm=1.0, log_every=0, save_every=0, stop_after=None)
    stop = types.SimpleNamespace(agreed=lambda accelerator: False)
    states, _ = worker._train_loop(accelerator, model, optimizer, scheduler, batches, worker.Progress(), cfg, 3,
                                   list(model.parameters()), tmp_path, stop)
    assert states["optimizer"] == "float32"
    assert model.earlier_alive == [False] * 3, "the last step's graph is alive during the next forward"
    assert alive_at_read == [False] * 3, "a step's graph (its leaf embedding output) is alive when memory is read"

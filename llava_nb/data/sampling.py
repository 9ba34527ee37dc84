"""LLaVA's ``--group_by_modality_length`` sampler (LLaVA-1.5's stage 2, scripts/v1_5/finetune.sh:16), reimplemented.

Citations are to haotian-liu/LLaVA@c121f04. ``LLaVATrainer._get_train_sampler`` (llava/train/llava_trainer.py:139-146)
builds its ``LengthGroupedSampler`` with the per-GPU batch ``B`` and ``world_size x gradient_accumulation_steps`` as
its "world size" ``W``, so that ``W x B`` samples are one optimizer step. The lengths are the dataset's
``modality_lengths`` (llava/train/train.py:683-690): the whitespace word count of all the turns, positive for a record
with an image, negative for a text-only one (image tokens are not counted). Then
``get_modality_length_grouped_indices`` (llava_trainer.py:60-85):

1. one modality only: ``get_length_grouped_indices`` (:63-65, :88-96): shuffle, cut into megabatches of ``W x B``,
   sort each by length (longest first) and deal it into ``W`` chunks of about equal total length
   (``split_to_even_chunks``, :38-57): the chunks are the micro-batches of one step, one per process and forward;
2. otherwise the image records and the text-only records (:66-67) each go through step 1 on their own (:69-70) and
   are cut into megabatches of ``W x B`` (:71-73); the megabatches of both pools, all but each pool's last, are put
   in a random order (:78-80), and the two leftovers, merged and sorted by index, come last (:75-77, :82-83).

So every optimizer step but the last holds one modality only, a random sample of it; the sort within a step does not
save padding, it balances the work across the processes. The order is one list for all processes; the
DataLoader cuts it into micro-batches of ``B`` and Accelerate deals micro-batch ``k`` to process ``k % world``
(``BatchSamplerShard``), so chunk ``j`` of a step runs on process ``j % world`` in forward ``j // world``: what
LLaVA's Hugging Face Trainer does with the same list.

Seeded: every random draw (the two pool shuffles, then the megabatch order) comes from one ``torch.Generator``
seeded with the run's seed and the epoch. LLaVA passes no generator (llava_trainer.py:141-146) and its pool
shuffles take ``generator=None`` (:69-70), i.e. torch's global generator: with the global generator seeded as ours
and ``generator=None``, LLaVA's functions give exactly our order (tests/test_sampling.py checks it).
"""

from __future__ import annotations

import torch


def modality_lengths(records) -> list[int]:
    """LLaVA's ``modality_lengths`` (train.py:683-690): words over all turns, negative for a text-only record."""
    lengths = []
    for rec in records:
        words = sum(len(turn["value"].split()) for turn in rec["conversations"])
        lengths.append(words if rec.get("image") is not None else -words)
    return lengths


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's order: a new order every epoch, the same on every process."""
    return torch.Generator().manual_seed(seed + 1_000_003 * epoch)


def split_to_even_chunks(indices: list[int], lengths, num_chunks: int) -> list[list[int]]:
    """``num_chunks`` equal-sized chunks, each index going to the chunk with the least total length so far
    (llava_trainer.py:38-57); a megabatch that does not divide evenly is dealt out round-robin instead."""
    if len(indices) % num_chunks:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    size = len(indices) // num_chunks
    chunks, totals = [[] for _ in range(num_chunks)], [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == size:
            totals[shortest] = float("inf")  # full: never chosen again
    return chunks


def length_grouped_indices(lengths, batch_size: int, world_size: int, generator: torch.Generator) -> list[int]:
    """Shuffle, cut into megabatches of ``world_size x batch_size``, sort each longest first and split it into
    ``world_size`` chunks of even length (llava_trainer.py:88-96)."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    size = world_size * batch_size
    out = []
    for start in range(0, len(order), size):
        megabatch = sorted(order[start:start + size], key=lambda i: lengths[i], reverse=True)
        out += [i for chunk in split_to_even_chunks(megabatch, lengths, world_size) for i in chunk]
    return out


def modality_length_grouped_indices(lengths, batch_size: int, world_size: int,
                                    generator: torch.Generator) -> list[int]:
    """LLaVA's ``get_modality_length_grouped_indices`` (llava_trainer.py:60-85); see the module docstring."""
    if any(length == 0 for length in lengths):
        raise ValueError("a modality length of 0 (a record with no words); drop the empty record")
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return length_grouped_indices(lengths, batch_size, world_size, generator)  # lengths as they are, as LLaVA
    size = world_size * batch_size
    pools = []
    for sign in (1, -1):  # images first, then text-only, each shuffled and chunked on its own (:66-70)
        index = [i for i, length in enumerate(lengths) if length * sign > 0]
        order = length_grouped_indices([lengths[i] * sign for i in index], batch_size, world_size, generator)
        shuffled = [index[i] for i in order]
        pools.append([shuffled[i:i + size] for i in range(0, len(shuffled), size)])
    (*image_megabatches, last_image), (*text_megabatches, last_text) = pools
    megabatches = image_megabatches + text_megabatches
    megabatches = [megabatches[i] for i in torch.randperm(len(megabatches), generator=generator).tolist()]
    megabatches.append(sorted(last_image + last_text))  # the leftovers, mixed, in index order (:82-83)
    return [i for megabatch in megabatches for i in megabatch]


class ModalityLengthGroupedSampler(torch.utils.data.Sampler):
    """LLaVA's ``group_by_modality_length`` order over ``lengths`` (``modality_lengths``), for a DataLoader of
    ``micro_batch`` samples on ``world_size`` processes that accumulate ``accumulation`` forwards per step.

    Deterministic: the order depends only on ``seed`` and the epoch (``set_epoch``, which Accelerate calls).
    """

    def __init__(self, lengths: list[int], micro_batch: int, world_size: int, accumulation: int = 1, seed: int = 0):
        if any(length == 0 for length in lengths):
            raise ValueError("a modality length of 0 (a record with no words); drop the empty record")
        self.lengths, self.micro_batch, self.seed, self.epoch = list(lengths), micro_batch, seed, 0
        self.chunks = world_size * accumulation  # LLaVA's world_size argument (llava_trainer.py:143)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = epoch_generator(self.seed, self.epoch)
        yield from modality_length_grouped_indices(self.lengths, self.micro_batch, self.chunks, generator)

"""``group_by_modality_length`` (llava_nb.data.sampling) against LLaVA's own sampler, copied below verbatim."""

import random
from types import SimpleNamespace

import pytest
import torch

from llava_nb.data.sampling import ModalityLengthGroupedSampler, epoch_generator, modality_lengths


# ---- haotian-liu/LLaVA@c121f04 llava/train/llava_trainer.py:38-96, verbatim ----
def split_to_even_chunks(indices, lengths, num_chunks):
    """
    Split a list of indices into `chunks` chunks of roughly equal lengths.
    """

    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]

    num_indices_per_chunk = len(indices) // num_chunks

    chunks = [[] for _ in range(num_chunks)]
    chunks_lengths = [0 for _ in range(num_chunks)]
    for index in indices:
        shortest_chunk = chunks_lengths.index(min(chunks_lengths))
        chunks[shortest_chunk].append(index)
        chunks_lengths[shortest_chunk] += lengths[index]
        if len(chunks[shortest_chunk]) == num_indices_per_chunk:
            chunks_lengths[shortest_chunk] = float("inf")

    return chunks


def get_modality_length_grouped_indices(lengths, batch_size, world_size, generator=None):
    # We need to use torch for the random part as a distributed sampler will set the random seed for torch.
    assert all(l != 0 for l in lengths), "Should not have zero length."  # noqa: E741
    if all(l > 0 for l in lengths) or all(l < 0 for l in lengths):  # noqa: E741
        # all samples are in the same modality
        return get_length_grouped_indices(lengths, batch_size, world_size, generator=generator)
    mm_indices, mm_lengths = zip(*[(i, l) for i, l in enumerate(lengths) if l > 0])  # noqa: E741
    lang_indices, lang_lengths = zip(*[(i, -l) for i, l in enumerate(lengths) if l < 0])  # noqa: E741

    mm_shuffle = [mm_indices[i] for i in get_length_grouped_indices(mm_lengths, batch_size, world_size, generator=None)]
    lang_shuffle = [lang_indices[i] for i in get_length_grouped_indices(lang_lengths, batch_size, world_size, generator=None)]  # noqa: E501
    megabatch_size = world_size * batch_size
    mm_megabatches = [mm_shuffle[i : i + megabatch_size] for i in range(0, len(mm_shuffle), megabatch_size)]
    lang_megabatches = [lang_shuffle[i : i + megabatch_size] for i in range(0, len(lang_shuffle), megabatch_size)]

    last_mm = mm_megabatches[-1]
    last_lang = lang_megabatches[-1]
    additional_batch = last_mm + last_lang
    megabatches = mm_megabatches[:-1] + lang_megabatches[:-1]
    megabatch_indices = torch.randperm(len(megabatches), generator=generator)
    megabatches = [megabatches[i] for i in megabatch_indices]

    if len(additional_batch) > 0:
        megabatches.append(sorted(additional_batch))

    return [i for megabatch in megabatches for i in megabatch]


def get_length_grouped_indices(lengths, batch_size, world_size, generator=None, merge=True):
    # We need to use torch for the random part as a distributed sampler will set the random seed for torch.
    indices = torch.randperm(len(lengths), generator=generator)
    megabatch_size = world_size * batch_size
    megabatches = [indices[i : i + megabatch_size].tolist() for i in range(0, len(lengths), megabatch_size)]
    megabatches = [sorted(megabatch, key=lambda i: lengths[i], reverse=True) for megabatch in megabatches]
    megabatches = [split_to_even_chunks(megabatch, lengths, world_size) for megabatch in megabatches]

    return [i for megabatch in megabatches for batch in megabatch for i in batch]


# ---- haotian-liu/LLaVA@c121f04 llava/train/train.py:683-690 (LazySupervisedDataset.modality_lengths), verbatim ----
def llava_modality_lengths(list_data_dict):
    length_list = []
    for sample in list_data_dict:
        cur_len = sum(len(conv['value'].split()) for conv in sample['conversations'])
        cur_len = cur_len if 'image' in sample else -cur_len
        length_list.append(cur_len)
    return length_list


def llava_order(lengths, micro, world, accum, seed, epoch=0):
    """LLaVA's order as ``LLaVATrainer._get_train_sampler`` builds it (llava_trainer.py:139-146: no generator, so
    every draw comes from torch's global generator), with that generator seeded as ours."""
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1_000_003 * epoch)
        return get_modality_length_grouped_indices(lengths, micro, world * accum, generator=None)


def _lengths(n_image, n_text, seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(n_image)] + [-rng.randint(1, 300) for _ in range(n_text)]
    rng.shuffle(lengths)
    return lengths


CASES = [  # (images, text-only, micro, world, accumulation)
    (200, 60, 4, 2, 1), (200, 60, 2, 2, 3), (97, 31, 3, 1, 2), (64, 32, 4, 2, 2),  # exact multiples: full leftovers
    (500, 8, 4, 4, 1), (10, 300, 2, 2, 2), (5, 3, 4, 2, 1),  # a pool smaller than one step
    (120, 0, 4, 2, 1), (121, 0, 3, 2, 2), (0, 90, 4, 2, 1), (0, 77, 2, 3, 1),  # one modality: the fallback
]


@pytest.mark.parametrize("n_image,n_text,micro,world,accum", CASES)
def test_order_is_llavas(n_image, n_text, micro, world, accum):
    for seed in (0, 7):
        lengths = _lengths(n_image, n_text, seed)
        sampler = ModalityLengthGroupedSampler(lengths, micro, world, accum, seed=seed)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            ours = list(sampler)
            assert sorted(ours) == list(range(len(lengths)))
            assert ours == llava_order(lengths, micro, world, accum, seed, epoch)
        assert ours != llava_order(lengths, micro, world, accum, seed, 0) or len(lengths) < 10  # new each epoch


def test_modality_lengths_are_llavas():
    raw = [{"id": "a", "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat  colour?"},
                                                            {"from": "gpt", "value": "Red, mostly.\n"}]},
           {"id": "b", "conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "hi"}]}]
    normalised = [{**r, "image": r.get("image")} for r in raw]  # load_conversations: image None when absent
    assert modality_lengths(normalised) == llava_modality_lengths(raw) == [5, -3]


def test_every_step_is_one_modality_but_the_last():
    micro, world, accum = 4, 2, 2
    step = micro * world * accum
    lengths = _lengths(203, 45, 3)
    order = list(ModalityLengthGroupedSampler(lengths, micro, world, accum, seed=3))
    full = 203 // step + 45 // step  # each pool's full steps; the leftovers (11 + 13) make the last, mixed one
    for k in range(full):
        signs = {lengths[i] > 0 for i in order[k * step:(k + 1) * step]}
        assert len(signs) == 1, k
    tail = order[full * step:]
    assert len(tail) == 203 % step + 45 % step and {lengths[i] > 0 for i in tail} == {True, False}
    kinds = [lengths[order[k * step]] > 0 for k in range(full)]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)  # the two pools' steps interleave


class _Indices(torch.utils.data.Dataset):
    """Items whose input_ids is their index, with LLaVA-shaped records (for modality_lengths)."""

    def __init__(self, lengths):
        self.records = [{"image": "x.png" if n > 0 else None,
                         "conversations": [{"from": "human", "value": "w " * abs(n)}]} for n in lengths]
        self.items = [SimpleNamespace(input_ids=[0] * abs(n)) for n in lengths]

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return {"input_ids": torch.tensor([i]), "labels": torch.tensor([i])}


def test_each_rank_gets_llavas_chunk():
    """batches.make_loader prepared by Accelerate for 2 processes: process r runs chunk j of a step's
    world x accumulation chunks (LLaVA's split_to_even_chunks) exactly when j % 2 == r, as under LLaVA's Trainer."""
    from accelerate.data_loader import prepare_data_loader

    from llava_nb.training.config import TrainConfig
    from llava_nb.training.batches import make_loader

    micro, world, accum, seed = 3, 2, 2, 5
    lengths = _lengths(150, 40, 1)
    cfg = TrainConfig(group_by_modality_length=True, batch_size=micro * world * accum, micro_batch=micro)
    for epoch in (0, 1):
        expected = llava_order(lengths, micro, world, accum, seed, epoch)
        chunks = [expected[k:k + micro] for k in range(0, len(expected) - micro + 1, micro)]
        for rank in range(world):
            loader = make_loader(_Indices(lengths), micro, world, accum, cfg, seed, SimpleNamespace(pad_token_id=0))
            loader = prepare_data_loader(loader, num_processes=world, process_index=rank, use_seedable_sampler=True)
            loader.set_epoch(epoch)
            got = [batch["input_ids"][:, 0].tolist() for batch in loader]
            assert got == chunks[rank::world][:len(got)] and len(got) == len(chunks) // world


def test_generator_and_config():
    from llava_nb.training.config import FULL_HYPERPARAMS, ConfigError, TrainConfig

    first, again = (torch.randperm(9, generator=epoch_generator(2, 1)) for _ in range(2))
    assert torch.equal(first, again)
    assert FULL_HYPERPARAMS[2].get("group_by_modality_length") and not FULL_HYPERPARAMS[2].get("group_by_length")
    with pytest.raises(ConfigError, match="set only one"):
        TrainConfig(group_by_length=True, group_by_modality_length=True)
    with pytest.raises(ValueError, match="length of 0"):
        ModalityLengthGroupedSampler([3, 0, -2], 1, 1)

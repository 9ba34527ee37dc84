"""A training process's data: the dataset of its conversations and the loader that batches them (``worker``).

    records (LLaVA JSON) -> ConversationDataset (input_ids, labels, pixel_values per sample)
    -> DataLoader (micro samples per process; shuffled, length-grouped, or LLaVA's one modality per step)
"""

from __future__ import annotations

import torch

from .config import TrainSpec


def make_dataset(spec: TrainSpec, config, tokenizer, image_processor, template):
    """The run's samples: ``spec.data``'s conversations, tokenized with their image tokens counted."""
    from ..data.dataset import ConversationDataset
    from ..data.records import load_conversations

    records = load_conversations(spec.data, spec.image_folder, images_outside=spec.config.images_outside_folder)
    return ConversationDataset(records, tokenizer, config, template, spec.config.max_length, image_processor)


def make_loader(dataset, micro: int, world: int, accum: int, cfg, seed: int, tokenizer):
    """Batches of ``micro`` samples per process: shuffled; grouped by length over ``micro * world`` samples
    (``group_by_length``); or LLaVA's one modality per step (``group_by_modality_length``). Accelerate's
    ``prepare`` deals the loader's consecutive batches to the processes in turn."""
    from ..data.dataset import Collator, LengthGroupedSampler
    from ..data.sampling import ModalityLengthGroupedSampler, modality_lengths

    collate = Collator(tokenizer.pad_token_id)
    sampler = None
    if cfg.group_by_length:  # batches of similar length, less padding
        sampler = LengthGroupedSampler([len(it.input_ids) for it in dataset.items], micro * world, seed=seed)
    elif cfg.group_by_modality_length:  # LLaVA's finetune.sh:16
        sampler = ModalityLengthGroupedSampler(modality_lengths(dataset.records), micro, world, accum, seed=seed)
    if sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_size=micro, sampler=sampler, drop_last=True,
                                           collate_fn=collate)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=micro, shuffle=True, drop_last=True, generator=generator,
                                       collate_fn=collate)

"""A torch ``Dataset`` of LLaVA conversations and the collator that batches them.

Text is tokenized once, up front (so truncation is counted and reported before training starts); images are read
and preprocessed on access. Each item holds ``input_ids``, ``labels`` and, for a record with an image,
``pixel_values`` ((3, S, S), or (views, 3, S, S) for v1.6's anyres) and ``image_size`` (h, w).
"""

from __future__ import annotations

import warnings

import torch
from torch.nn.utils.rnn import pad_sequence

from ..models.architectures import as_config
from .records import DataError
from ..models.image_tokens import count_image_tokens
from ..models.templates import IGNORE_INDEX, tokenize_conversation


def open_image(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


class ConversationDataset(torch.utils.data.Dataset):
    """Records from ``load_conversations`` -> model inputs for one LLaVA ``config`` and conversation ``template``."""

    def __init__(self, records, tokenizer, config, template: str, max_length: int | None = None,
                 image_processor=None, blank_images: bool = False):
        from PIL import Image

        from ..models.processors import build_image_processor

        self.config = as_config(config)
        self.tokenizer = tokenizer
        self.image_processor = image_processor or build_image_processor(self.config)
        self.records = list(records)
        self.blank_images = blank_images
        self.template = template
        self.items, self.sizes = [], []
        truncated = 0
        for rec in self.records:
            size = None
            if rec["image"] is not None:
                with Image.open(rec["image"]) as im:
                    size = (im.height, im.width)
            n = count_image_tokens(self.config, *size) if size else 0
            tok = tokenize_conversation(tokenizer, rec["conversations"], template, n, max_length, record_id=rec["id"])
            truncated += tok.truncated > 0
            self.items.append(tok)
            self.sizes.append(size)
        if truncated:
            warnings.warn(f"{truncated} of {len(self.records)} samples were longer than max_length={max_length} and lost "
                          "text at the end (never image tokens)", stacklevel=2)

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i):
        """The (possibly blanked) PIL image of item ``i``."""
        from PIL import Image

        img = open_image(self.records[i]["image"])
        if self.blank_images:  # the blank-image baseline: same size, one flat colour
            img = Image.new("RGB", img.size, img.getpixel((0, 0)))
        return img

    def __getitem__(self, i) -> dict:
        tok = self.items[i]
        item = {"input_ids": torch.tensor(tok.input_ids), "labels": torch.tensor(tok.labels), "id": self.records[i]["id"]}
        if self.sizes[i] is not None:
            px = self.image_processor(self.image(i), return_tensors="pt")
            item["pixel_values"] = px["pixel_values"][0]  # (3, S, S) or (views, 3, S, S)
            item["image_size"] = self.sizes[i]
        return item


class Collator:
    """Pads a list of items into a batch. ``padding_side="right"`` for training, ``"left"`` for batched generation
    (so every prompt ends at the last position and generation continues from there)."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id, self.padding_side = pad_token_id, padding_side

    def _pad(self, seqs, value):
        side = self.padding_side
        return pad_sequence(seqs, batch_first=True, padding_value=value, padding_side=side)

    def __call__(self, items: list[dict]) -> dict:
        ids = [it["input_ids"] for it in items]
        batch = {
            "input_ids": self._pad(ids, self.pad_token_id),  # (B, T)
            "attention_mask": self._pad([torch.ones_like(x) for x in ids], 0),  # (B, T)
            "labels": self._pad([it["labels"] for it in items], IGNORE_INDEX),  # (B, T)
        }
        pixels = [it["pixel_values"] for it in items if "pixel_values" in it]
        if pixels:
            if pixels[0].dim() == 4:  # anyres: pad the views of every image to the batch's maximum
                views = max(p.shape[0] for p in pixels)
                pixels = [torch.cat([p, p.new_zeros(views - p.shape[0], *p.shape[1:])]) for p in pixels]
                batch["image_sizes"] = torch.tensor([it["image_size"] for it in items if "pixel_values" in it])
            batch["pixel_values"] = torch.stack(pixels)  # (n_images, 3, S, S) or (n_images, views, 3, S, S)
        return batch


def check_batch(batch: dict, config) -> None:
    """Raise ``DataError`` if a batch's image tokens and images disagree (cheap; run it on the first batch)."""
    cfg = as_config(config)
    n_tokens = int((batch["input_ids"] == cfg.image_token_id).sum())
    n_images = 0 if "pixel_values" not in batch else batch["pixel_values"].shape[0]
    if (n_tokens == 0) != (n_images == 0):
        raise DataError("batch", f"{n_tokens} image tokens but {n_images} images", "check the records' <image> and image keys")


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Shuffle, then sort each mega-batch of ``mega`` x ``group`` samples by length (longest first), so that the
    samples batched together have similar lengths and little padding: the ``group_by_length`` setting, after the
    Hugging Face Trainer's option of that name (transformers 5.24.0 ``trainer_pt_utils.get_length_grouped_indices``,
    mega-batches of up to 50 batches sorted longest first). ``group`` is the global batch (micro-batch x processes),
    because Accelerate deals consecutive micro-batches to the processes. It is not LLaVA's
    ``group_by_modality_length`` (``sampling.ModalityLengthGroupedSampler``), which keeps each step to one modality
    and uses its length sort only to balance the work across processes.

    Deterministic: the order depends only on ``seed`` and the epoch (``set_epoch``, which Accelerate calls).
    """

    def __init__(self, lengths: list[int], group: int, seed: int = 0, mega: int = 50):
        self.lengths, self.group, self.seed, self.mega, self.epoch = list(lengths), group, seed, mega, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.mega * self.group
        for start in range(0, len(order), size):
            chunk = sorted(order[start:start + size], key=lambda i: -self.lengths[i])  # stable: ties keep the shuffle
            yield from chunk

"""Every sample's length before training: its text tokens plus its image tokens, against ``max_length``.

LLaVA cuts what does not fit without a word: the collator keeps the first ``model_max_length`` tokens of every
sample (haotian-liu/LLaVA@c121f04 llava/train/train.py:758-759), and after the image features are spliced in the
model cuts again (llava/model/llava_arch.py:273-277, with ``tokenizer_model_max_length`` set at train.py:924). A cut
answer trains on half a sentence and a cut through the image features breaks the sample. This package truncates
nothing silently: ``train()`` runs ``check_lengths`` on the training data (and the held-out questions it will
evaluate) in the launching process, before any worker starts or any weight loads, and refuses a sample longer than
``max_length`` with a one-line ``SampleTooLongError`` that names the record and the fix. (``ConversationDataset``,
used on its own, still cuts text with a warning and never cuts image tokens: ``models.templates``.)

The count is the one the workers' ``ConversationDataset`` makes (``tokenize_conversation`` without a maximum):
``<s>`` + the template's segments tokenized piece by piece + ``count_image_tokens`` for the record's image. It is
cheap: each distinct text piece is tokenized once, in one batch (a synthetic set of 3,000 conversations has under
400 distinct pieces; the system prompt and the repeated questions are counted once), and an image is opened (its
header only) just when the sample could exceed ``max_length`` with the most image tokens any image gives
(``max_image_tokens``; v1/v1.5 images always give the same count, so none is opened).
"""

from __future__ import annotations

from ..models.image_tokens import count_image_tokens, max_image_tokens
from ..models.templates import IMAGE_TOKEN, render, tokenize_conversation
from .records import DataError


class SampleTooLongError(DataError):
    """A sample longer than ``max_length`` once its image tokens are counted."""


def text_lengths(tokenizer, records: list[dict], template: str) -> list[int]:
    """The text tokens of each record under ``template`` (``<s>`` included, image tokens not), exactly as
    ``tokenize_conversation`` counts them."""
    if template == "chat_template":  # the tokenizer's own template: one record at a time
        return [len(tokenize_conversation(tokenizer, r["conversations"], template, 1 if r.get("image") else 0,
                                          record_id=r.get("id", i)).input_ids) - (1 if r.get("image") else 0)
                for i, r in enumerate(records)]
    pieces = [[p for text, _ in render(template, r["conversations"]) for p in text.split(IMAGE_TOKEN) if p]
              for r in records]
    unique = list(dict.fromkeys(p for ps in pieces for p in ps))
    counts = {}
    for start in range(0, len(unique), 20_000):  # batches of distinct pieces
        chunk = unique[start:start + 20_000]
        counts.update(zip(chunk, map(len, tokenizer(chunk, add_special_tokens=False)["input_ids"])))
    return [1 + sum(counts[p] for p in ps) for ps in pieces]


def image_size(path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header (as ``ConversationDataset`` reads it)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def sample_lengths(tokenizer, config, records: list[dict], template: str) -> list[tuple[int, int]]:
    """(text tokens, image tokens) of each record, every image opened: what ``ConversationDataset`` builds."""
    return [(n, count_image_tokens(config, *image_size(r["image"])) if r.get("image") else 0)
            for n, r in zip(text_lengths(tokenizer, records, template), records)]


def check_lengths(tokenizer, config, records: list[dict], template: str, max_length: int, source="data") -> None:
    """Raise ``SampleTooLongError`` if a record of ``source`` (the file, for the message) is longer than
    ``max_length`` once its image tokens are counted. The message names the first such record (its index in the
    file and its id), its count, how many records are too long, and the ``max_length`` that fits them all."""
    most = max_image_tokens(config)
    over = []  # (index, text tokens, image tokens)
    for i, (n, r) in enumerate(zip(text_lengths(tokenizer, records, template), records)):
        if n + (most if r.get("image") else 0) <= max_length:
            continue
        images = count_image_tokens(config, *image_size(r["image"])) if r.get("image") else 0
        if n + images > max_length:
            over.append((i, n, images))
    if not over:
        return
    i, n, images = over[0]
    longest = max(n + m for _, n, m in over)
    others = f"; {len(over)} of {len(records)} records are too long, the longest {longest} tokens" if len(over) > 1 \
        else ""
    raise SampleTooLongError(
        f"{source} record #{i} (id {records[i].get('id')!r})",
        f"{n + images} tokens ({n} text + {images} image) exceed max_length={max_length}{others}",
        f"raise it to {longest} (--set max_length={longest}, or train(..., max_length={longest})) or shorten or drop "
        "the record(s): nothing is truncated")

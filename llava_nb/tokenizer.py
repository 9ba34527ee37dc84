"""The tiny models' tokenizer: a byte-level BPE trained locally with 🤗 ``tokenizers``.

Nothing can be downloaded here, so the tiny world has its own tokenizer. It is trained on a deterministic corpus
of the words the book's synthetic data uses (shapes, colours, counts, positions) and the conversation templates'
markers, and saved under ``data/tokenizer``. Byte-level BPE means any text still tokenizes: unseen words just
take more tokens.

Regenerate it with ``python -m llava_nb.tokenizer`` (``make data``).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from .paths import TOKENIZER_DIR

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
VOCAB_SIZE = 1024

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "pink", "brown", "cyan"]
SHAPES = ["circle", "square", "triangle", "star", "rectangle", "ellipse", "diamond", "cross"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
POSITIONS = ["top left", "top right", "bottom left", "bottom right", "center", "top", "bottom", "left", "right"]
SIZES = ["small", "large", "tiny", "big", "medium"]

# The conversation templates' fixed text (LLaVA's conversation.py): plain, vicuna_v1, mistral_instruct.
TEMPLATE_TEXT = [
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT:",
    "[INST] [/INST]",
    "Answer the question using a single word or phrase.",
    "Describe the image briefly. What is in the picture? Give a short caption.",
]

QUESTION_TEMPLATES = [
    "What color is the {shape}?",
    "How many {shape}s are there?",
    "Where is the {colour} {shape}?",
    "What shape is {colour}?",
    "Is there a {colour} {shape} in the image?",
    "Is the {shape} on the {position}?",
]
CAPTION_TEMPLATES = [
    "A {size} {colour} {shape} in the {position}.",
    "There are {number} {colour} {shape}s.",
    "The image shows a {colour} {shape} on the {position}, next to a {size} {shape2}.",
    "{number} shapes: a {colour} {shape} and a {colour2} {shape2}.",
]

ANSWER_TEMPLATES = ["Yes.", "No.", "{Colour}.", "{Number}.", "{Shape}.", "{digits}", "It is {colour}.", "In the {position}."]


def training_corpus(n_sentences: int = 6000, seed: int = 0) -> list[str]:
    """A deterministic list of sentences covering the synthetic data's vocabulary and the templates' markers."""
    rng = random.Random(seed)
    lines = list(TEMPLATE_TEXT)
    for words in (COLOURS, SHAPES, NUMBERS, POSITIONS, SIZES):
        lines.append(" ".join(words))
        lines.append(" ".join(w.capitalize() for w in words))
    templates = QUESTION_TEMPLATES + CAPTION_TEMPLATES + ANSWER_TEMPLATES
    for _, template in zip(range(n_sentences), itertools.cycle(templates)):
        lines.append(
            template.format(
                shape=rng.choice(SHAPES), shape2=rng.choice(SHAPES), colour=rng.choice(COLOURS),
                colour2=rng.choice(COLOURS), position=rng.choice(POSITIONS), size=rng.choice(SIZES),
                number=rng.choice(NUMBERS), Colour=rng.choice(COLOURS).capitalize(),
                Number=rng.choice(NUMBERS).capitalize(), Shape=rng.choice(SHAPES).capitalize(),
                digits=str(rng.randrange(0, 100)),
            )
        )
    return lines


def train_tokenizer(out_dir: Path | str = TOKENIZER_DIR, vocab_size: int = VOCAB_SIZE):
    """Train the byte-level BPE tokenizer and save it as a transformers tokenizer in ``out_dir``.

    The tokenizer prepends ``<s>`` like Llama's and keeps ``<image>`` as one special token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=4096,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def load_tokenizer(path: Path | str = TOKENIZER_DIR):
    """Load the committed tiny tokenizer (or a tokenizer saved at ``path``)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"no tokenizer at {path}; regenerate it with `python -m llava_nb.tokenizer` (or `make data`)"
        )
    return AutoTokenizer.from_pretrained(str(path))


if __name__ == "__main__":
    t = train_tokenizer()
    print(f"saved a {len(t)}-token tokenizer to {TOKENIZER_DIR}")

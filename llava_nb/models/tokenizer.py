"""The tiny models' tokenizer: a byte-level BPE trained locally with 🤗 ``tokenizers``.

Nothing can be downloaded here, so the tiny world has its own tokenizer. It is trained on a deterministic corpus
of the book's synthetic data (captions, questions, answers) and the conversation templates' fixed text
(``data.synthetic.training_corpus``), and saved
under ``data/tokenizer`` with a Vicuna-style chat template. Byte-level BPE means any text still tokenizes: unseen words just
take more tokens.

Regenerate it with ``python -m llava_nb regenerate tokenizer`` (``make data``).
"""

from __future__ import annotations

from pathlib import Path

from ..paths import TOKENIZER_DIR
from .templates import IMAGE_TOKEN, TINY_CHAT_TEMPLATE

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
VOCAB_SIZE = 1024

def train_tokenizer(corpus: list[str], out_dir: Path | str = TOKENIZER_DIR, vocab_size: int = VOCAB_SIZE):
    """Train the byte-level BPE tokenizer on ``corpus`` (the tiny world's: ``data.synthetic.training_corpus``) and
    save it as a transformers tokenizer in ``out_dir``.

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
    tok.train_from_iterator(corpus, trainer=trainer)
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
    fast.chat_template = TINY_CHAT_TEMPLATE
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
            f"no tokenizer at {path}; regenerate it with `python -m llava_nb regenerate tokenizer` (or `make data`)"
        )
    return AutoTokenizer.from_pretrained(str(path))


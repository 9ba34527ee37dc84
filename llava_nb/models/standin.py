"""Full-size checkpoints with random weights, in the llava-hf format, written locally: ``make-checkpoint``.

No machine here can download the real weights, but the code that loads and trains a real checkpoint does not look
at the weights' values. A stand-in has exactly the real architecture (the config numbers of ``specs.py``), the
real dtype on disk (fp16, as the llava-hf checkpoints store it), sharded safetensors, and a processor that keeps
what the model's shapes depend on: the image size, the anyres grid, the ``<image>`` token's id (32000) and a chat
template. Its tokenizer is the tiny world's byte-level BPE, renumbered so that ``<image>`` and ``<pad>`` sit at
the real ids (32000, 32001) with unused placeholders between, inside the model's 32064-row embedding.

    python -m llava_nb make-checkpoint --like llava-1.5-7b --out checkpoints/llava-1.5-7b-random
    python -m llava_nb train --model checkpoints/llava-1.5-7b-random --stage 2 --data ... --image-folder ...
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..errors import LlavaNbError
from ..paths import TOKENIZER_DIR
from .checkpoint_check import check_checkpoint
from .specs import get_spec
from .templates import IMAGE_TOKEN, VICUNA_SYSTEM

#: the models a stand-in is made for (those with a public llava-hf checkpoint to stand in for)
STANDINS = ("llava-1.5-7b", "llava-1.5-13b", "llava-v1.6-mistral-7b", "llava-v1.6-vicuna-7b", "llava-v1.6-vicuna-13b")
PAD_TOKEN = "<pad>"
#: the file that marks a folder as a stand-in (what it stands in for, the seed, "weights": "random")
MARKER = "llava_nb_standin.json"
#: a message's content, a string or a list of image and text items (the processors' chat format)
_CONTENT = ("{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
            "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}")
#: Vicuna v1's turns (LLaVA-1.5's conv_vicuna_v1): the system prompt, then "USER: ... ASSISTANT: ...</s>"
VICUNA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if loop.first %}" + VICUNA_SYSTEM + " {% endif %}USER: " + _CONTENT
    + " ASSISTANT:{% else %}{% generation %} " + _CONTENT + "</s>{% endgeneration %}{% endif %}{% endfor %}")
#: Mistral-Instruct's turns (LLaVA-NeXT's mistral_instruct): "[INST] ... [/INST]...</s>"
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] " + _CONTENT
    + " [/INST]{% else %}{% generation %}" + _CONTENT + "</s>{% endgeneration %}{% endif %}{% endfor %}")


def is_standin(source: str | Path) -> bool:
    """Whether ``source`` (a folder, or a known name or Hub id read through ``LLAVA_NB_CHECKPOINTS``) is a stand-in
    written by ``make-checkpoint``. Its weights are random: what it generates, and any accuracy, is noise."""
    from .local import resolve

    folder = Path(resolve(str(source)))
    return (folder / MARKER).is_file()


def check_standin(like: str, out: Path | str) -> tuple[str, Path]:
    """``(canonical name, folder)``, or a ``LlavaNbError`` naming the fix, before any weights are made."""
    from .specs import resolve_name

    name = resolve_name(like)
    if name not in STANDINS:
        raise LlavaNbError(f"make-checkpoint makes stand-ins for {', '.join(STANDINS)}, not {name!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LlavaNbError(f"{out} is not empty; choose a new folder (nothing is overwritten)")
    return name, out


def make_checkpoint(like: str, out: Path | str, seed: int = 0, device: str | None = None) -> Path:
    """Write a random-weight stand-in for ``like`` to ``out`` (an empty or new folder); returns ``out``."""
    name, out = check_standin(like, out)
    return write_standin(get_spec(name), out, seed, device)


def write_standin(spec, out: Path, seed: int = 0, device: str | None = None) -> Path:
    """The checkpoint of ``spec`` (a ``ModelSpec``) with random weights, as llava-hf lays one out.

    Built straight in fp16 on ``device`` (default: the GPU if there is one), saved as sharded safetensors into a
    temporary sibling folder that is renamed into place; the config is the real one, with no llava_nb-specific
    keys."""
    import torch

    from .architectures import build_model, spec_to_config

    config = spec_to_config(spec)
    for key in ("llava_nb_name", "mm_projector_type"):  # a real llava-hf config has neither (mlp2x_gelu is the default)
        delattr(config, key)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(config, device=device, dtype=torch.float16, seed=seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
    del model
    standin_processor(config).save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"like": spec.llava_nb_name, "seed": seed, "weights": "random"}) + "\n")
    check_checkpoint(tmp)  # what train() checks first: a stand-in passes it, as a real llava-hf checkpoint does
    if out.exists():
        out.rmdir()  # empty: check_standin refuses a folder with files
    tmp.rename(out)
    return out


def standin_tokenizer(image_token_id: int, vocab_rows: int):
    """The tiny BPE tokenizer renumbered: ``<image>`` at ``image_token_id``, ``<pad>`` after it, placeholders
    between; every id below ``vocab_rows`` (the model's embedding rows)."""
    from transformers import PreTrainedTokenizerFast

    data = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    moved = {IMAGE_TOKEN: image_token_id, PAD_TOKEN: image_token_id + 1}
    if image_token_id + 1 >= vocab_rows:
        raise LlavaNbError(f"<image> at {image_token_id} and <pad> after it need {image_token_id + 2} embedding rows, "
                           f"the model has {vocab_rows}")
    for token, new in moved.items():
        vocab[f"<unused{vocab[token]}>"] = vocab[token]  # keep the old id taken: ids stay contiguous
        vocab[token] = new
    used = set(vocab.values())
    for i in range(max(used) + 1):
        if i not in used:
            vocab[f"<unused{i}>"] = i
    for added in data["added_tokens"]:
        added["id"] = vocab[added["content"]]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(data))
        return PreTrainedTokenizerFast(tokenizer_file=str(Path(tmp) / "tokenizer.json"), bos_token="<s>",
                                       eos_token="</s>", unk_token="<unk>", pad_token=PAD_TOKEN,
                                       extra_special_tokens={"image_token": IMAGE_TOKEN}, model_max_length=4096)


def standin_processor(config):
    """The processor of a stand-in: the real image processing and image-token layout, the renumbered tokenizer and
    the chat template of the model's LLM (Vicuna's, or Mistral-Instruct's)."""
    from .processors import build_processor

    tokenizer = standin_tokenizer(config.image_token_index, config.text_config.vocab_size)
    mistral = config.text_config.model_type == "mistral"
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE if mistral else VICUNA_CHAT_TEMPLATE
    processor = build_processor(config, tokenizer)
    processor.chat_template = tokenizer.chat_template
    return processor

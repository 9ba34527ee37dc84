"""Conversation templates and label masks: how a LLaVA conversation becomes ``input_ids`` and ``labels``.

A template renders the turns as a list of *segments* ``(text, supervised)``. Only the assistant's answers (with
their end-of-turn marker) are supervised; everything else gets label -100, which the loss ignores. Each segment is
tokenized on its own and ``<image>`` becomes exactly as many image tokens as the image gives features, so the label
mask lines up with the tokens by construction (LLaVA's own code re-tokenizes the whole prompt and warns about a
"tokenization mismatch" when the pieces disagree).

Templates, as in LLaVA's ``conversation.py``:

* ``plain`` (stage 1): ``<image>`` + caption + ``\\n``; the human's text is dropped.
* ``vicuna_v1`` (v1.5): ``SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>``
* ``mistral_instruct`` (v1.6-mistral): ``[INST] q [/INST] a </s>[INST] q2 [/INST] a2 </s>``
* ``chat_template``: the tokenizer's own Jinja chat template, with ``{% generation %}`` marking the answers.

The leading space of each answer belongs to the answer segment, so a generation prompt (which ends at
``ASSISTANT:``) tokenizes exactly like the same position in training.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ImageTokenMismatchError, LlavaNbError
#: the placeholder a prompt carries where the image goes (one special token of every tokenizer here)
IMAGE_TOKEN = "<image>"

VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
TEMPLATES = ("plain", "vicuna_v1", "mistral_instruct", "chat_template")
IGNORE_INDEX = -100


def render(template: str, turns: list[dict], for_generation: bool = False) -> list[tuple[str, bool]]:
    """Segments ``(text, supervised)`` of a conversation. With ``for_generation`` the last answer is left out and the
    segments end where the model should start writing."""
    if template not in TEMPLATES or template == "chat_template":
        raise LlavaNbError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES[:3])} "
                           "(chat_template goes through tokenize_conversation)")
    pairs = [(turns[i]["value"], turns[i + 1]["value"] if i + 1 < len(turns) else None) for i in range(0, len(turns), 2)]
    if for_generation:
        pairs[-1] = (pairs[-1][0], None)
    segs: list[tuple[str, bool]] = []
    if template == "plain":
        # LLaVA's preprocess_plain keeps only the image and the caption
        segs.append((IMAGE_TOKEN if IMAGE_TOKEN in pairs[0][0] else "", False))
        if pairs[0][1] is not None:
            segs.append((pairs[0][1] + "\n", True))
        return segs
    for i, (question, answer) in enumerate(pairs):
        if template == "vicuna_v1":
            segs.append(((VICUNA_SYSTEM + " " if i == 0 else "") + f"USER: {question} ASSISTANT:", False))
            if answer is not None:
                segs.append((f" {answer}</s>", True))
        else:  # mistral_instruct
            segs.append((f"[INST] {question} [/INST]", False))
            if answer is not None:
                segs.append((f" {answer} </s>", True))
    return segs


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    image_span: tuple[int, int] | None  # [start, end) of the image tokens
    truncated: int = 0  # text tokens cut from the end


def _encode_text(tokenizer, text: str, n_image_tokens: int, image_id: int) -> tuple[list[int], int | None]:
    """Token ids of ``text`` with ``<image>`` expanded to ``n_image_tokens`` ids; also the offset of the image."""
    ids, offset = [], None
    pieces = text.split(IMAGE_TOKEN)
    for k, piece in enumerate(pieces):
        if k > 0:
            offset = len(ids)
            ids += [image_id] * n_image_tokens
        if piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids, offset


def tokenize_conversation(tokenizer, turns: list[dict], template: str, n_image_tokens: int = 0,
                          max_length: int | None = None, for_generation: bool = False, record_id="sample") -> Tokenized:
    """``input_ids`` and ``labels`` for one conversation.

    ``n_image_tokens`` is how many features the record's image becomes (``count_image_tokens``). Truncation to
    ``max_length`` cuts text from the end and reports how much in ``truncated``; it never cuts through the image
    tokens: such a sample is refused with ``ImageTokenMismatchError``, the error transformers would otherwise raise
    later as "Image features and image tokens do not match". ``train()`` never gets here with a sample too long:
    it refuses one before any process starts (``data.lengths``).
    """
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids, labels, span = [tokenizer.bos_token_id], [IGNORE_INDEX], None
    if template == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise LlavaNbError("this tokenizer has no chat template; use vicuna_v1, mistral_instruct or plain")
        messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in turns]
        if for_generation:
            messages = messages[:-1]
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                            add_generation_prompt=for_generation)
        ids, labels = [], []
        for tok, is_answer in zip(out["input_ids"], out["assistant_masks"]):
            if tok == image_id:
                span = (len(ids), len(ids) + n_image_tokens)
                ids += [image_id] * n_image_tokens
                labels += [IGNORE_INDEX] * n_image_tokens
            else:
                ids.append(tok)
                labels.append(tok if is_answer else IGNORE_INDEX)
    else:
        for text, supervised in render(template, turns, for_generation):
            seg, offset = _encode_text(tokenizer, text, n_image_tokens, image_id)
            if offset is not None:
                span = (len(ids) + offset, len(ids) + offset + n_image_tokens)
            ids += seg
            labels += seg if supervised else [IGNORE_INDEX] * len(seg)
    if (span is not None) != (n_image_tokens > 0):
        raise ImageTokenMismatchError(
            f"{record_id}: {'no <image> in the text' if span is None else '<image> in the text'} but "
            f"{n_image_tokens} image features; every image needs exactly one <image> placeholder")
    truncated = 0
    if max_length is not None and len(ids) > max_length:
        if span is not None and span[1] > max_length:
            raise ImageTokenMismatchError(
                f"{record_id}: truncating to max_length={max_length} would cut through the image tokens "
                f"(positions {span[0]}-{span[1] - 1}); raise max_length to at least {span[1]} or drop the sample")
        truncated = len(ids) - max_length
        ids, labels = ids[:max_length], labels[:max_length]
    return Tokenized(ids, labels, span, truncated)


#: A Vicuna-style chat template for the tiny tokenizer; ``{% generation %}`` marks what the loss supervises.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% if loop.first %}" + VICUNA_SYSTEM + " {% endif %}"
    "USER: {{ message['content'] }} ASSISTANT:"
    "{% else %}{% generation %} {{ message['content'] }}</s>{% endgeneration %}{% endif %}"
    "{% endfor %}"
)

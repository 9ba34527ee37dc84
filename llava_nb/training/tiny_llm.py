"""The tiny Llama's pretraining: next-token loss on the synthetic text rendered in the conversation templates (see
``pretrain``'s docstring for the whole tiny world)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn

from .pretrain import LANGUAGE_DIR, _fit, _write_log


def _text_batch(rng: random.Random, tok, n: int, context_prob: float = 0.0) -> dict:
    """``n`` synthetic conversations rendered in a random template, without images, padded: next-token targets.

    With probability ``context_prob`` a question-answer conversation starts with the scene's caption where the
    image would be, so that the answers follow from the text before them."""
    from ..data.synthetic import QUESTION_TYPES, SHORT_ANSWER_PROMPT, caption, question, random_scene
    from ..models.templates import tokenize_conversation

    seqs = []
    for _ in range(n):
        scene = random_scene(rng)
        if rng.random() < 0.25:
            turns = [{"from": "human", "value": "Describe the image briefly."}, {"from": "gpt", "value": caption(scene)}]
        else:
            turns = []
            context = context_prob > 0 and rng.random() < context_prob
            for t in range(rng.choice((1, 2, 3))):
                q, short, sentence = question(scene, rng.choice(QUESTION_TYPES), rng)
                if context and t == 0:
                    q = f"{caption(scene)}\n{q}"
                short_form = rng.random() < 0.5
                turns += [{"from": "human", "value": f"{q}\n{SHORT_ANSWER_PROMPT}" if short_form else q},
                          {"from": "gpt", "value": short if short_form else sentence}]
        template = rng.choice(("vicuna_v1", "mistral_instruct"))
        seqs.append(torch.tensor(tokenize_conversation(tok, turns, template).input_ids))
    ids = nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=tok.pad_token_id)
    mask = nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True)
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pretrain_language(out_dir: Path | str = LANGUAGE_DIR, steps: int = 300, batch_size: int = 32, lr: float = 3e-3,
                      seed: int = 0, log_every: int = 10, context_prob: float = 0.0) -> dict:
    """Train the tiny Llama on synthetic chat text; save it (safetensors) and the training log to ``out_dir``."""
    from transformers import LlamaForCausalLM

    from ..models.architectures import llm_config
    from ..models.specs import tiny_llama
    from ..models.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    rng = random.Random(f"{seed}-text")
    tok = load_tokenizer()
    model = LlamaForCausalLM(llm_config(tiny_llama(len(tok))))
    log, seconds = _fit(model, lambda: (model(**_text_batch(rng, tok, batch_size, context_prob)).loss, {}), steps, lr, log_every)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return _write_log(out, log, seconds, steps=steps, batch_size=batch_size, lr=lr, seed=seed)

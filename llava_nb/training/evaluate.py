"""Held-out evaluation: greedy answers, exact-match accuracy per question type, and the blank-image baseline."""

from __future__ import annotations

import re
import string
from collections import defaultdict

import torch

from ..data.dataset import Collator, ConversationDataset


def normalise_answer(text: str) -> str:
    """Lower-case, cut at the end-of-turn marker, strip whitespace and surrounding punctuation."""
    text = text.split("</s>")[0]
    return re.sub(r"\s+", " ", text).strip().strip(string.punctuation + " ").lower()


@torch.no_grad()
def generate_answers(model, dataset: ConversationDataset, batch_size: int = 32, max_new_tokens: int = 8,
                     padding_side: str = "left") -> list[str]:
    """Greedy answers to each record's last question, batched with left padding (``padding_side="right"`` only to
    show what it breaks: a shorter prompt's generation would continue after its pad tokens)."""
    from ..models.templates import tokenize_conversation

    tok = dataset.tokenizer
    collate = Collator(tok.pad_token_id, padding_side=padding_side)
    answers = []
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        items = []
        for i in range(start, min(start + batch_size, len(dataset))):
            item = dataset[i]  # pixel values; the ids are replaced by the prompt without its last answer
            n = dataset.items[i].image_span[1] - dataset.items[i].image_span[0] if dataset.sizes[i] else 0
            prompt = tokenize_conversation(tok, dataset.records[i]["conversations"], dataset.template, n,
                                           for_generation=True)
            item["input_ids"] = torch.tensor(prompt.input_ids)
            item["labels"] = torch.tensor(prompt.labels)
            items.append(item)
        batch = {k: v.to(device) for k, v in collate(items).items() if k != "labels"}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        answers += [tok.decode(row, skip_special_tokens=False) for row in new]
    return answers


def evaluate(model, dataset: ConversationDataset, batch_size: int = 32, max_new_tokens: int = 8, examples: int = 8) -> dict:
    """Exact-match accuracy of generated answers against each record's last answer, overall and by
    ``question_type`` (records without one count as ``"all"``)."""
    predictions = generate_answers(model, dataset, batch_size, max_new_tokens)
    hits, counts = defaultdict(int), defaultdict(int)
    rows = []
    for rec, pred in zip(dataset.records, predictions):
        truth = normalise_answer(rec["conversations"][-1]["value"])
        ok = normalise_answer(pred) == truth
        qtype = rec.get("question_type", "all")
        hits[qtype] += ok
        counts[qtype] += 1
        rows.append({"id": rec["id"], "question": rec["conversations"][-2]["value"].replace("<image>", "").strip(),
                     "answer": truth, "generated": normalise_answer(pred), "correct": bool(ok)})
    total = sum(counts.values())
    return {"accuracy": sum(hits.values()) / total if total else float("nan"),
            "by_type": {k: hits[k] / counts[k] for k in sorted(counts)}, "n": total, "examples": rows[:examples],
            "predictions": rows}

"""Tiny stage 2: a data shape that reaches 90% in the CPU budget (data/gpu/sweep_data.jsonl).

Which stage-2 data shape lets the tiny LLaVA-1.5 reach the 90% target in the CPU time budget: more question
turns per image (LLaVA-1.5 merges the questions about one image into one multi-turn conversation), distinct
question types per conversation, learning rate and epochs::

    python -m experiments.gpu sweep_data data/gpu/sweep_data.jsonl [VARIANT ...]

Each variant regenerates the synthetic set with ``synthetic.generate(turns=..., distinct_types=...)`` in its own
cache folder (and, for ``pretrain`` variants, retrains the tiny LLM with ``pretrain_language(**pretrain)``),
trains stage 1 and stage 2 with ``llava_nb.training.api`` (the CPU recipe's code path; the GPU only makes
the sweep fast), and appends one JSON line: held-out accuracy by type, blank-image accuracy, steps, seconds, and
the stage-2 tokens per epoch (what the CPU time is proportional to). The records in ``sweep_data.jsonl`` came from
two calls on one lent NVIDIA H200 on 2026-11-28, all variants of a call at once. ``sweep_recipe`` reuses
``fresh_folder``, ``train_stage2`` and ``tokens_per_epoch``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import PRETRAINED_DIR, append_line

VARIANTS = {
    "turns 1-3 (current)": dict(data={}, hp={}),
    "turns 2-4": dict(data={"turns": (2, 3, 4)}, hp={}),
    "turns 2-4, lr 5e-4": dict(data={"turns": (2, 3, 4)}, hp={"lr": 5e-4}),
    "turns 4-5 distinct": dict(data={"turns": (4, 5), "distinct_types": True}, hp={}),
    "turns 4-5 distinct, lr 5e-4": dict(data={"turns": (4, 5), "distinct_types": True}, hp={"lr": 5e-4}),
    "turns 5 distinct, lr 5e-4": dict(data={"turns": (5,), "distinct_types": True}, hp={"lr": 5e-4}),
    "turns 4-5 distinct, 2000 images, 9 epochs, lr 5e-4": dict(
        data={"turns": (4, 5), "distinct_types": True}, hp={"lr": 5e-4, "epochs": 9, "n_images": 2000}),
    "turns 2-4 distinct, 8 epochs, lr 5e-4": dict(data={"turns": (2, 3, 4), "distinct_types": True},
                                                  hp={"lr": 5e-4, "epochs": 8}),
    # the LLM pretrained with the caption in place of the image before half (or all) of its questions
    "LLM context 0.5": dict(data={}, hp={}, pretrain={"context_prob": 0.5}),
    "LLM context 0.5, lr 5e-4": dict(data={}, hp={"lr": 5e-4}, pretrain={"context_prob": 0.5}),
    "LLM context 1.0": dict(data={}, hp={}, pretrain={"context_prob": 1.0}),
    "LLM context 0.5, 600 steps": dict(data={}, hp={}, pretrain={"context_prob": 0.5, "steps": 600}),
    "LLM context 0.5, turns 5 distinct, lr 5e-4": dict(data={"turns": (5,), "distinct_types": True},
                                                       hp={"lr": 5e-4}, pretrain={"context_prob": 0.5}),
    "LLM context 0.5, turns 2-4": dict(data={"turns": (2, 3, 4)}, hp={}, pretrain={"context_prob": 0.5}),
    "LLM context 0.5, 9 epochs, lr 5e-4": dict(data={}, hp={"lr": 5e-4, "epochs": 9}, pretrain={"context_prob": 0.5}),
    "LLM context 0.5, 4 epochs": dict(data={}, hp={"epochs": 4}, pretrain={"context_prob": 0.5}),
}

WORKER = r"""
import functools, json, sys
import llava_nb.training.pretrain as pre
import llava_nb.data.synthetic as syn
data, pretrain = json.loads(sys.argv[1])
syn.generate = functools.partial(syn.generate, **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
pre.pretrain_language = functools.partial(pre.pretrain_language, **pretrain)
from llava_nb.cli import main
sys.exit(main(sys.argv[2:]))
"""


def tokens_per_epoch(instruct_json: str) -> tuple[int, int]:
    """(samples, tokens) of one stage-2 epoch under LLaVA-1.5's vicuna_v1 template, 36 image tokens a sample."""
    from llava_nb.models.templates import tokenize_conversation
    from llava_nb.models.tokenizer import load_tokenizer

    tok = load_tokenizer()
    recs = json.loads(Path(instruct_json).read_text())
    return len(recs), sum(len(tokenize_conversation(tok, r["conversations"], "vicuna_v1", 36, None).input_ids)
                          for r in recs)


def fresh_folder(work: Path, prefix: str, name: str) -> str:
    """An empty folder of its own under ``work`` for a variant's cache (and retrained parts)."""
    d = work / f"{prefix}-{name}"
    shutil.rmtree(d, ignore_errors=True)
    return str(d)


def train_stage2(worker: str, payload: list, hp: dict, env: dict, *cli: str) -> tuple[dict | None, str]:
    """Run ``python -c worker json(payload) train --model tiny-llava-1.5 --stage 2 --set log_every=0 [--set k=v for
    hp] *cli`` and return (the command's last JSON line, "") or (None, the end of its stderr) if it failed."""
    args = [a for k, val in hp.items() for a in ("--set", f"{k}={val}")]
    p = subprocess.run([sys.executable, "-c", worker, json.dumps(payload), "train", "--model", "tiny-llava-1.5",
                        "--stage", "2", *cli, "--set", "log_every=0", *args], env=env, capture_output=True, text=True)
    if p.returncode:
        return None, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), ""


def run(name: str, work: Path) -> dict:
    """Train the variant ``name`` in a fresh cache: its record, or {"name", "error"} if training failed."""
    v = VARIANTS[name]
    d = fresh_folder(work, "sweep_data", name)
    env = {**os.environ, "LLAVA_NB_CACHE": d, "OMP_NUM_THREADS": "2"}
    if v.get("pretrain"):  # a fresh LLM in the variant's own folder, beside a copy of the committed ViT
        shutil.copytree(PRETRAINED_DIR / "tiny-clip-vit", f"{d}/pretrained/tiny-clip-vit")
        env["LLAVA_NB_PRETRAINED"] = f"{d}/pretrained"
    start = time.time()
    r, error = train_stage2(WORKER, [v["data"], v.get("pretrain", {})], v["hp"], env)
    if r is None:
        return {"name": name, "error": error}
    n_images = v["hp"].get("n_images", 3000)
    samples, tokens = tokens_per_epoch(f"{d}/synthetic/square-{n_images}-300-seed0/instruct.json")
    return {"name": name, "data": v["data"], "hp": v["hp"], "pretrain": v.get("pretrain", {}), "device": "gpu",
            "acc": r["eval_accuracy"], "by_type": r["eval_by_type"], "blank": r["eval_blank_accuracy"],
            "steps": r["steps"], "epochs": v["hp"].get("epochs", 6), "samples_per_epoch": samples,
            "tokens_per_epoch": tokens, "s": round(time.time() - start)}


def add_arguments(p) -> None:
    p.add_argument("out", help="JSON-lines file the records are appended to")
    p.add_argument("variants", nargs="*", metavar="VARIANT", help="names in VARIANTS (default: all), run at once")


def main(a) -> None:
    names = a.variants or list(VARIANTS)
    with ThreadPoolExecutor(len(names)) as ex:
        for res in ex.map(run, names, [a.work] * len(names)):
            append_line(a.out, res)

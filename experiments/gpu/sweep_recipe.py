"""Tiny stage 2: the recipe search for 90% in the CPU budget (data/gpu/sweep_recipe.jsonl).

Session 6's search for a tiny LLaVA-1.5 recipe that reaches 90% held-out accuracy inside the CPU budget::

    python -m experiments.gpu sweep_recipe OUT.jsonl [VARIANT ... | --from=N | --from=N:M]

The earlier sweeps (``sweep_compute.jsonl``, ``sweep_data.jsonl``) showed that the yes/no questions ("exists",
"position") need about twice the stage-2 compute of the current recipe. A CPU step costs what its tokens cost
(matrix products run near a core's peak), so this sweep tries what might make each token teach more, at the
compute a 2-core CPU can afford (about 12 epochs of batches grouped by length):

* ``describe``: a share of the stage-2 conversations opens with a description turn (the caption: every shape's
  colour and quadrant), as LLaVA-Instruct mixes detailed descriptions with its conversations;
* ``type_weights``: the yes/no question types asked more often in training (the test split is unchanged);
* gradient clipping at 1.0 (the Hugging Face Trainer's default, so LLaVA's recipe), with a higher learning rate;
* a longer stage 1; a larger batch; bf16 autocast (what the CPU recipe would use to be faster); other seeds.

Later calls (``--from=N``) ran the same settings without grouping and with several seeds, weight decay, the new
default recipe ("recipe": hp={} means ``train.TINY_HYPERPARAMS[2]`` as committed with this data: 12 epochs, lr 5e-4,
weight decay 0.5, bf16 autocast, not grouped) with fewer epochs, and with retrained pretrained parts ("pretrain":
each part missing from the variant's folder is retrained on the GPU, with the given steps; "keep" copies a committed
part instead). Five calls on one lent NVIDIA H200 on 2026-11-28 made ``sweep_recipe.jsonl``: --from=0, 22, 40,
59, 73. The first two ran before the recipe changed, so every setting there that does not name them ran in fp32
without weight decay (the earlier defaults), ``BASE`` meaning 12 epochs at 5e-4. In calls 3-5 the recipe's
attention was the model's default (SDPA); session 7 made eager attention part of the recipe and a sixth call
(--from=82) ran it by name; a seventh (--from=87:95 on one GPU, --from=95 on the other) compared it with SDPA on
the same seeds, and an eighth (--from=102) ran both on five more seeds.

Each variant trains stage 1 and stage 2 through the command line (the CPU recipe's code path; the GPU only makes
the sweep fast) in its own cache folder, all variants at once, and appends one JSON line: held-out accuracy by
type, blank-image accuracy, steps, the stage-2 tokens per epoch (what the CPU time is proportional to), seconds.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .common import PRETRAINED_DIR, append_line
from .sweep_data import fresh_folder, tokens_per_epoch, train_stage2

G = {"group_by_length": True}
BASE = {"epochs": 12, "lr": 5e-4}
DESCRIBE = {"describe": 0.3}
YES_NO = {"type_weights": {"exists": 2.0, "position": 2.0}}
CLIP = {"max_grad_norm": 1.0}
T24D = {**DESCRIBE, "turns": (2, 3, 4)}

#: name -> data (``synthetic.generate`` arguments), hp (stage 2), stage1 (stage-1 hyperparameters), seed
VARIANTS = {
    "base": dict(data={}, hp=BASE),
    "base, grouped": dict(data={}, hp={**BASE, **G}),
    "base, grouped, seed 1": dict(data={}, hp={**BASE, **G}, seed=1),
    "describe 0.3": dict(data=DESCRIBE, hp={**BASE, **G}),
    "describe 0.3, seed 1": dict(data=DESCRIBE, hp={**BASE, **G}, seed=1),
    "describe 0.3, seed 2": dict(data=DESCRIBE, hp={**BASE, **G}, seed=2),
    "describe 0.5": dict(data={"describe": 0.5}, hp={**BASE, **G}),
    "describe 0.3, 9 epochs": dict(data=DESCRIBE, hp={**BASE, **G, "epochs": 9}),
    "describe 0.3, bf16": dict(data=DESCRIBE, hp={**BASE, **G, "mixed_precision": "bf16"}),
    "yes/no x2": dict(data=YES_NO, hp={**BASE, **G}),
    "describe 0.3, yes/no x2": dict(data={**DESCRIBE, **YES_NO}, hp={**BASE, **G}),
    "clip": dict(data={}, hp={**BASE, **G, **CLIP}),
    "clip, lr 1e-3": dict(data={}, hp={**BASE, **G, **CLIP, "lr": 1e-3}),
    "lr 7e-4": dict(data={}, hp={**BASE, **G, "lr": 7e-4}),
    "describe 0.3, clip, lr 7e-4": dict(data=DESCRIBE, hp={**BASE, **G, **CLIP, "lr": 7e-4}),
    "stage 1 x3": dict(data={}, hp={**BASE, **G}, stage1={"epochs": 3}),
    "stage 1 x3, lr 5e-4": dict(data={}, hp={**BASE, **G}, stage1={"epochs": 3, "lr": 5e-4}),
    "batch 64, lr 1e-3": dict(data={}, hp={**BASE, **G, "batch_size": 64, "lr": 1e-3}),
    "turns 2-4, describe 0.3": dict(data={**DESCRIBE, "turns": (2, 3, 4)}, hp={**BASE, **G}),
    "describe 0.3, yes/no x2, stage 1 x3, clip": dict(data={**DESCRIBE, **YES_NO}, hp={**BASE, **G, **CLIP},
                                                      stage1={"epochs": 3}),
    "15 epochs": dict(data={}, hp={**BASE, **G, "epochs": 15}),
    "unfreeze ViT": dict(data={}, hp={**BASE, **G, "unfreeze_vision": True}),
    # second call: batches not grouped by length (grouped runs rarely learned "exists"), several seeds each
    **{f"base, seed {s}": dict(data={}, hp=BASE, seed=s) for s in (1, 2)},
    **{f"turns 2-4, describe 0.3, seed {s}": dict(data=T24D, hp=BASE, seed=s) for s in (0, 1, 2)},
    **{f"turns 2-4, describe 0.3, grouped, seed {s}": dict(data=T24D, hp={**BASE, **G}, seed=s) for s in (1, 2)},
    **{f"turns 2-4, seed {s}": dict(data={"turns": (2, 3, 4)}, hp=BASE, seed=s) for s in (0, 1)},
    **{f"describe 0.3, ungrouped, seed {s}": dict(data=DESCRIBE, hp=BASE, seed=s) for s in (0, 1)},
    **{f"weight decay {wd}, seed {s}": dict(data={}, hp={**BASE, "weight_decay": wd}, seed=s)
       for wd in (0.5, 1.0) for s in (0, 1)},
    **{f"turns 2-4, describe 0.3, weight decay 0.5, seed {s}": dict(data=T24D, hp={**BASE, "weight_decay": 0.5}, seed=s)
       for s in (0, 1)},
    "turns 2-4, describe 0.3, bf16": dict(data=T24D, hp={**BASE, "mixed_precision": "bf16"}),
    # third call: the new default recipe (12 epochs, lr 5e-4, weight decay 0.5, bf16, not grouped) on more seeds,
    # with fewer epochs, and with shorter pretraining of the tiny LLM and ViT (what the CPU budget could spare)
    **{f"recipe, seed {s}": dict(data={}, hp={}, seed=s) for s in (1, 2)},
    **{f"recipe, {e} epochs, seed {s}": dict(data={}, hp={"epochs": e}, seed=s) for e in (11, 10) for s in (0, 1, 2)},
    **{f"recipe, LLM 150 steps, seed {s}": dict(data={}, hp={}, seed=s, pretrain={"language": {"steps": 150}})
       for s in (0, 1, 2)},
    **{f"recipe, LLM and ViT 200 steps, seed {s}": dict(data={}, hp={}, seed=s,
                                                      pretrain={"language": {"steps": 200}, "vision": {"steps": 200}})
       for s in (0, 1, 2)},
    **{f"recipe, weight decay 1.0, 10 epochs, seed {s}": dict(data={}, hp={"weight_decay": 1.0, "epochs": 10}, seed=s)
       for s in (0, 1, 2)},
    **{f"recipe, LLM 150, ViT 200 steps, 11 epochs, seed {s}": dict(
        data={}, hp={"epochs": 11}, seed=s, pretrain={"language": {"steps": 150}, "vision": {"steps": 200}})
       for s in (0, 1)},
    # fourth call: a longer-pretrained LLM (fewer pretraining steps hurt "exists" above), with fewer stage-2 epochs
    **{f"recipe, LLM {n} steps, {e} epochs, seed {s}": dict(data={}, hp={"epochs": e}, seed=s,
                                                           pretrain={"language": {"steps": n}})
       for n, e in ((450, 10), (450, 9), (600, 9), (600, 8)) for s in (0, 1, 2)},
    **{f"recipe, LLM 450 steps, seed {s}": dict(data={}, hp={}, seed=s, pretrain={"language": {"steps": 450}})
       for s in (0, 1)},
    # fifth call: every "pretrain" variant above retrained both parts on the GPU, whose numerics differ from the CPU
    # that trained the committed parts (the CPU retrains them bit for bit). Which part matters?
    **{f"recipe, parts retrained on the GPU, seed {s}": dict(data={}, hp={}, seed=s, pretrain={"language": {}})
       for s in (0, 1, 2)},
    **{f"recipe, ViT retrained on the GPU, seed {s}": dict(data={}, hp={}, seed=s, pretrain={"keep": ["tiny-llama"]})
       for s in (0, 1, 2)},
    **{f"recipe, LLM retrained on the GPU, seed {s}": dict(data={}, hp={}, seed=s,
                                                         pretrain={"keep": ["tiny-clip-vit"]}) for s in (0, 1, 2)},
    # sixth call (session 7): the recipe with eager attention instead of SDPA, which halves a bf16 step's time on a
    # CPU (data/benchmarks/cpu_step_time.json): does "exists" still come out in every seed?
    **{f"recipe, eager attention, seed {s}": dict(data={}, hp={"attn_implementation": "eager"}, seed=s)
       for s in (0, 1, 2, 3, 4)},
    # seventh call: the same five seeds with SDPA (the recipe of calls 3-5), and two ways eager attention might
    # learn "exists" more reliably: more epochs (what the CPU budget now affords), more weight decay
    **{f"recipe, SDPA attention, seed {s}": dict(data={}, hp={"attn_implementation": "sdpa"}, seed=s)
       for s in (0, 1, 2, 3, 4)},
    **{f"recipe, eager attention, 14 epochs, seed {s}": dict(data={}, hp={"attn_implementation": "eager",
                                                                          "epochs": 14}, seed=s)
       for s in (0, 1, 2, 3, 4)},
    **{f"recipe, eager attention, weight decay 1.0, seed {s}": dict(
        data={}, hp={"attn_implementation": "eager", "weight_decay": 1.0}, seed=s) for s in (0, 1, 2, 3, 4)},
    # eighth call: five more seeds for the new recipe (14 epochs, eager) and for the old one (12 epochs, SDPA)
    **{f"recipe, eager attention, 14 epochs, seed {s}": dict(data={}, hp={"attn_implementation": "eager",
                                                                          "epochs": 14}, seed=s)
       for s in (5, 6, 7, 8, 9)},
    **{f"recipe, SDPA attention, seed {s}": dict(data={}, hp={"attn_implementation": "sdpa"}, seed=s)
       for s in (5, 6, 7, 8, 9)},
}

WORKER = r"""
import functools, json, sys
import llava_nb.training.pretrain as pre
import llava_nb.data.synthetic as syn
import llava_nb.training.api
train = sys.modules["llava_nb.training.api"]
data, stage1, pretrain = json.loads(sys.argv[1])
pretrain.pop("keep", None)
pre.pretrain_language = functools.partial(pre.pretrain_language, **pretrain.get("language", {}))
pre.pretrain_vision = functools.partial(pre.pretrain_vision, **pretrain.get("vision", {}))
data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
syn.generate = functools.partial(syn.generate, **data)
train.TINY_HYPERPARAMS[1].update(stage1)
from llava_nb.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run(name: str, work: Path) -> dict:
    """Train the variant ``name`` in a fresh cache: its record, or {"name", "error"} if training failed."""
    v = VARIANTS[name]
    seed = v.get("seed", 0)
    d = fresh_folder(work, "sweep_recipe", name)
    env = {**os.environ, "LLAVA_NB_CACHE": d, "OMP_NUM_THREADS": "1"}
    if v.get("pretrain"):  # fresh tiny parts in the variant's own folder (but copies of the committed ones in "keep")
        env["LLAVA_NB_PRETRAINED"] = f"{d}/pretrained"
        for part in v["pretrain"].get("keep", []):
            shutil.copytree(PRETRAINED_DIR / part, f"{d}/pretrained/{part}")
    start = time.time()
    r, error = train_stage2(WORKER, [v["data"], v.get("stage1", {}), v.get("pretrain", {})], v["hp"], env,
                            "--seed", str(seed))
    if r is None:
        return {"name": name, "error": error}
    samples, tokens = tokens_per_epoch(glob.glob(f"{d}/synthetic/square-*-seed{seed}/instruct.json")[0])
    return {"name": name, "data": v["data"], "hp": v["hp"], "stage1": v.get("stage1", {}),
            "pretrain": v.get("pretrain", {}), "seed": seed,
            "device": "gpu", "acc": r["eval_accuracy"], "by_type": r["eval_by_type"],
            "blank": r["eval_blank_accuracy"], "steps": r["steps"], "samples_per_epoch": samples,
            "tokens_per_epoch": tokens, "s": round(time.time() - start)}


def add_arguments(p) -> None:
    p.add_argument("out", help="JSON-lines file the records are appended to")
    p.add_argument("variants", nargs="*", metavar="VARIANT", help="names in VARIANTS (default: all), run at once")
    p.add_argument("--from", dest="span", metavar="N[:M]",
                   help="instead of names: the variants from the N-th on (a later call), or the N-th to the M-th")


def select(variants: list[str], span: str | None) -> list[str]:
    """The names a call runs: ``variants`` (all of ``VARIANTS`` if none), or ``VARIANTS``' slice N:M of ``span``."""
    if span:
        first, _, last = span.partition(":")
        return list(VARIANTS)[int(first):int(last) if last else None]
    return variants or list(VARIANTS)


def main(a) -> None:
    names = select(a.variants, a.span)
    with ThreadPoolExecutor(len(names)) as ex:
        for future in as_completed([ex.submit(run, name, a.work) for name in names]):
            append_line(a.out, future.result())

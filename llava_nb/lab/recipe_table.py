"""Write ``data/llava_recipe.json``: each setting of LLaVA's recipe the package uses for real checkpoints, by stage
(1, 2, "lora": stage 2 with an adapter). A row holds the package's ``value`` (from ``TrainConfig.recipe``,
``FULL_METHODS``, ...); ``llava``: the file of haotian-liu/LLaVA@c121f04, the line that sets the flag and its
verbatim text (a flag the script leaves out: its default in ``llava/train/train.py``; a key LLaVA's DeepSpeed file
leaves out: no line), with the ``rule`` that reads the value off the line; and ``project``: the package's line.
Without ``--llava``, LLaVA's side is kept as committed and only the package's is refreshed.
``tests/test_recipe_table.py`` checks the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

from ..methods.deepspeed import deepspeed_config
from ..methods.lora import LLM_TARGETS, llava_lora_config
from ..paths import DATA_DIR, REPO_ROOT
from ..training.config import FULL_HYPERPARAMS, FULL_LORA, FULL_METHODS, TrainConfig

OUT = DATA_DIR / "llava_recipe.json"
SCRIPTS = {1: "scripts/v1_5/pretrain.sh", 2: "scripts/v1_5/finetune.sh", "lora": "scripts/v1_5/finetune_lora.sh"}
TRAIN_PY, CONFIG, LORA = "llava/train/train.py", "llava_nb/training/config.py", "llava_nb/methods/lora.py"
#: setting -> LLaVA's flag, in the table's order ("": no flag; see llava_side)
FLAGS = {"method": "--deepspeed", "lr": "--learning_rate", "batch_size": "--per_device_train_batch_size",
         "epochs": "--num_train_epochs", "max_length": "--model_max_length", "warmup_ratio": "--warmup_ratio",
         "weight_decay": "--weight_decay", "lr_scheduler": "--lr_scheduler_type", "mixed_precision": "--bf16",
         "tf32": "--tf32", "gradient_checkpointing": "--gradient_checkpointing",
         "group_by_modality_length": "--group_by_modality_length", "gradient_clipping": ""}
LORA_FLAGS = {"lr": "--learning_rate", "mm_projector_lr": "--mm_projector_lr", "lora_r": "--lora_r",
              "lora_alpha": "--lora_alpha", "lora_dropout": "--lora_dropout", "lora_bias": "--lora_bias",
              "lora_targets": ""}
RULES = {"method": "--deepspeed file", "batch_size": "per GPU x 8 GPUs", "mixed_precision": "--bf16 True: bf16"}
#: settings set outside config.py: file, anchors
ELSEWHERE = {"lr_scheduler": ("llava_nb/training/worker.py", ["get_cosine_schedule_with_warmup(optimizer"]),
             "gradient_clipping": ("llava_nb/methods/deepspeed.py", ["def default_clipping"]),
             "lora_targets": (LORA, ["LLM_TARGETS = "]), "lora_bias": (LORA, ["def llava_lora_config", 'bias="none"'])}
NOTES = {"batch_size": "LLaVA's global batch: 8 GPUs, --gradient_accumulation_steps 1",
         "lr_scheduler": "warm-up of ceil(warmup_ratio x steps) steps, then cosine decay to 0, as the Trainer's",
         "gradient_clipping": "no gradient_clipping key: DeepSpeed's default, 0 (no clipping) in LLaVA's 0.12.6",
         "lora_targets": "find_all_linear_names (train.py:169-182): every Linear outside the projector and the "
                         "vision tower, less lm_head; on a Llama LLM, these seven",
         "default": "not set by the script: train.py's default"}


def project_value(setting: str, stage) -> object:
    """The package's value of ``setting`` at ``stage``, from the recipe objects."""
    cfg = TrainConfig.recipe(False, 2 if stage == "lora" else stage, adapter=stage == "lora")
    if setting == "method":
        return FULL_METHODS[stage]
    if setting == "gradient_clipping":
        return deepspeed_config(FULL_METHODS[stage], 64, max_grad_norm=cfg.max_grad_norm)["gradient_clipping"]
    if setting == "lr_scheduler":
        worker = (REPO_ROOT / ELSEWHERE["lr_scheduler"][0]).read_text()
        return re.search(r"get_(\w+)_schedule_with_warmup\(optimizer", worker).group(1)
    if setting == "lora_targets":
        return list(LLM_TARGETS)
    if setting == "lora_bias":
        return llava_lora_config().bias
    return getattr(cfg, setting)


def llava_side(root: Path, setting: str, stage, flag: str) -> dict:
    """``rule`` and ``llava``: LLaVA's file, the line that holds ``find`` (exactly one) and its text."""
    if setting == "gradient_clipping":
        file = f"scripts/{FULL_METHODS[stage]}.json"
        assert '"gradient_clipping"' not in (root / file).read_text(), file
        return dict(rule="absent", llava=dict(file=file, line=None, text=None, find="gradient_clipping"))
    if setting == "lora_targets":
        file, find, rule = TRAIN_PY, "target_modules=find_all_linear_names", "code"
    elif f"{flag} " in (root / SCRIPTS[stage]).read_text():
        file, find, rule = SCRIPTS[stage], f"{flag} ", RULES.get(setting, "flag")
    else:  # the script leaves the flag out: TrainingArguments' default
        file, find, rule = TRAIN_PY, f"    {flag[2:]}: ", "default"
    lines = (root / file).read_text().splitlines()
    hits = [n for n, line in enumerate(lines, 1) if find in line]
    assert len(hits) == 1, f"{find!r} is on lines {hits} of {file}"
    return dict(rule=rule, llava=dict(file=file, line=hits[0], text=lines[hits[0] - 1], find=find.strip()))


def project_side(setting: str, stage, value) -> dict:
    """``project``: the package's file, and the line that holds the last anchor (each searched after the last)."""
    if setting == "method":
        file, anchors = CONFIG, ["FULL_METHODS = ", f'{stage}: "{value}"']
    elif stage == "lora" and setting in FULL_LORA:
        file, anchors = CONFIG, ["FULL_LORA = dict(", f"{setting}="]
    elif stage != "lora" and setting in FULL_HYPERPARAMS[stage]:
        file, anchors = CONFIG, ["FULL_HYPERPARAMS = {", f"    {stage}: dict(", f"{setting}="]
    elif setting in {f.name for f in dataclasses.fields(TrainConfig)}:
        file, anchors = CONFIG, ["class TrainConfig", f"    {setting}: "]
    else:
        file, anchors = ELSEWHERE[setting]
    lines, i = (REPO_ROOT / file).read_text().splitlines(), 0
    for anchor in anchors:
        i = next((j for j in range(i, len(lines)) if anchor in lines[j]), None)
        assert i is not None, f"{anchors} not found in {file}"
    return dict(file=file, line=i + 1, match=anchors[-1].strip())


def rows(llava: Path | None) -> list[dict]:
    missing = (set(FULL_HYPERPARAMS[1]) | set(FULL_HYPERPARAMS[2])) - set(FLAGS) | set(FULL_LORA) - set(LORA_FLAGS)
    assert not missing, f"give LLaVA's flag for {sorted(missing)} in FLAGS or LORA_FLAGS"
    committed = {} if llava else {(r["setting"], r["stage"]): r for r in json.loads(OUT.read_text())}
    out = []
    for stage, setting, flag in ([(s, k, f) for k, f in FLAGS.items() for s in (1, 2)]
                                 + [("lora", k, f) for k, f in LORA_FLAGS.items()]):
        value = project_value(setting, stage)
        row = dict(setting=setting, stage=stage, value=value)
        if llava:
            row.update(llava_side(llava, setting, stage, flag))
        else:
            row.update({k: committed[setting, stage][k] for k in ("rule", "llava")})
        row["project"] = project_side(setting, stage, value)
        note = NOTES.get(setting) or NOTES.get(row["rule"])
        out.append({**row, "note": note} if note else row)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m llava_nb.lab.recipe_table", description=__doc__.split("\n")[0])
    p.add_argument("--llava", type=Path, help="a checkout of haotian-liu/LLaVA at c121f04")
    table = rows(p.parse_args(argv).llava)
    OUT.write_text("[\n" + ",\n".join(json.dumps(r) for r in table) + "\n]\n")
    print(f"{len(table)} rows -> {OUT}")


if __name__ == "__main__":
    main()

"""The table of LLaVA's recipe (data/llava_recipe.json, tabled in chapter 04) against the code and against LLaVA.

Each row is checked three ways: its value is what the recipe objects give; LLaVA's line, carried verbatim, holds the
flag and a value that reads as the same (by the row's rule); the package's line holds the setting. Every setting of
the recipes has a row. With ``LLAVA_SRC`` set to a checkout of haotian-liu/LLaVA at c121f04, the lines are also
compared with LLaVA's files. To refresh the file: ``python -m llava_nb.lab.recipe_table [--llava LLAVA_SRC]``.
"""

import ast
import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from llava_nb.paths import DATA_DIR, REPO_ROOT
from llava_nb.training.config import FULL_HYPERPARAMS, FULL_LORA, FULL_METHODS, TrainConfig, llava_recipe_table

ROWS = json.loads((DATA_DIR / "llava_recipe.json").read_text())
IDS = [f"{row['setting']}-{row['stage']}" for row in ROWS]
#: LLaVA-1.5's runs: 8 GPUs, --gradient_accumulation_steps 1, so the global batch is 8 x the per-GPU batch
LLAVA_GPUS = 8
#: DeepSpeed's gradient_clipping where the config has none, in 0.12.6 (the version LLaVA pins): 0, no clipping
DEEPSPEED_CLIPPING_DEFAULT = 0.0
SCRIPTS = {1: "scripts/v1_5/pretrain.sh", 2: "scripts/v1_5/finetune.sh", "lora": "scripts/v1_5/finetune_lora.sh"}
#: what the package's line must mention, where it is not the setting's own name
MENTIONS = {"method": "FULL_METHODS", "lr_scheduler": "schedule", "gradient_clipping": "clipping",
            "lora_targets": "TARGETS", "lora_bias": "bias"}


def code_value(setting: str, stage):
    """The package's value, read from the code (not from the table's generator)."""
    cfg = TrainConfig.recipe(False, 2 if stage == "lora" else stage, adapter=stage == "lora")
    if setting == "method":
        return FULL_METHODS[stage]
    if setting == "gradient_clipping":
        from llava_nb.methods.deepspeed import deepspeed_config

        return deepspeed_config(FULL_METHODS[stage], 64, max_grad_norm=cfg.max_grad_norm)["gradient_clipping"]
    if setting == "lr_scheduler":
        worker = (REPO_ROOT / "llava_nb/training/worker.py").read_text()
        schedules = re.findall(r"get_(\w+)_schedule_with_warmup\(", worker)
        assert len(set(schedules)) == 1, schedules
        return schedules[0]
    if setting == "lora_targets":
        from llava_nb.methods.lora import LLM_TARGETS

        return list(LLM_TARGETS)
    if setting == "lora_bias":
        from llava_nb.methods.lora import llava_lora_config

        return llava_lora_config().bias
    assert setting in {f.name for f in dataclasses.fields(TrainConfig)}, f"no such setting in the code: {setting}"
    return getattr(cfg, setting)


def _literal(raw: str):
    raw = raw.strip("\"'")
    if raw in ("True", "False"):
        return raw == "True"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def llava_value(row: dict):
    """The value LLaVA's line gives, by the row's rule (None for "code": checked against the code only)."""
    rule, llava = row["rule"], row["llava"]
    if rule == "absent":
        assert llava["line"] is None and llava["file"] == f"scripts/{FULL_METHODS[row['stage']]}.json"
        return DEEPSPEED_CLIPPING_DEFAULT
    assert llava["find"] in llava["text"], (llava["find"], llava["text"])
    if rule == "code":
        return None
    if rule == "default":  # a TrainingArguments field: "name: type = value" or "= field(default=value)"
        assert llava["file"] == "llava/train/train.py"
        raw = (re.search(r"default=([^,)]+)", llava["text"]) or re.search(r"= (.+)$", llava["text"])).group(1)
        return _literal(raw)
    raw = re.search(re.escape(llava["find"]) + r"\s+(\S+)", llava["text"]).group(1)
    assert llava["file"] == SCRIPTS[row["stage"]] and llava["find"].startswith("--")
    convert = {"flag": _literal, "per GPU x 8 GPUs": lambda r: int(r) * LLAVA_GPUS,
               "--bf16 True: bf16": lambda r: "bf16" if r == "True" else "no",
               "--deepspeed file": lambda r: re.fullmatch(r"\./scripts/(\w+)\.json", r).group(1)}
    return convert[rule](raw)


def check_value(row):
    assert row["value"] == code_value(row["setting"], row["stage"]), "the table's value is not the code's"


def check_llava(row):
    expected = llava_value(row)
    assert expected is None or (row["value"] == expected and type(row["value"]) is type(expected)), expected


def check_project(row):
    project = row["project"]
    lines = (REPO_ROOT / project["file"]).read_text().splitlines()
    assert 1 <= project["line"] <= len(lines)
    text = lines[project["line"] - 1]
    moved = "; if a line only moved, `python -m llava_nb.lab.recipe_table` refreshes the package's line numbers"
    assert project["match"] in text and MENTIONS.get(row["setting"], row["setting"]) in text, text + moved
    if project["file"].endswith("config.py") and project["match"][-1] in "=:":  # the literal set there
        raw = re.search(re.escape(project["match"]) + r"(?:\s*[\w |]+=)?\s*([^,)\s]+)", text).group(1)
        assert ast.literal_eval(raw) == row["value"], text


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_the_value_is_the_codes(row):
    check_value(row)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_llavas_line_gives_the_value(row):
    check_llava(row)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_the_packages_line_sets_it(row):
    check_project(row)


def test_every_recipe_setting_has_one_row():
    have = [(row["setting"], row["stage"]) for row in ROWS]
    assert len(set(have)) == len(have), "one row per setting and stage"
    want = {(k, s) for s in (1, 2) for k in ("method", *FULL_HYPERPARAMS[s])} | {(k, "lora") for k in FULL_LORA}
    # and whatever else the recipes change: fields off TrainConfig's defaults; LoRA's off stage 2's
    default, stage2, lora = TrainConfig(), TrainConfig.recipe(False, 2), TrainConfig.recipe(False, 2, adapter=True)
    stages = {1: TrainConfig.recipe(False, 1), 2: stage2}
    for f in dataclasses.fields(TrainConfig):
        want |= {(f.name, s) for s, cfg in stages.items() if getattr(cfg, f.name) != getattr(default, f.name)}
        want |= {(f.name, "lora")} if getattr(lora, f.name) != getattr(stage2, f.name) else set()
    assert want <= set(have), sorted(want - set(have), key=str)
    assert llava_recipe_table() == ROWS


def test_the_checks_catch_a_drift():
    """A wrong value, a LLaVA line that says another value and a line of ours that does not set it all fail."""
    row = next(r for r in ROWS if (r["setting"], r["stage"]) == ("lr", 2))
    for check in (check_value, check_llava, check_project):
        check(row)
    broken = [(check_value, dict(row, value=3e-5)), (check_llava, dict(row, value=3e-5)),
              (check_llava, dict(row, llava=dict(row["llava"], text="    --learning_rate 3e-5 \\"))),
              (check_llava, dict(row, llava=dict(row["llava"], text="    --weight_decay 2e-5 \\"))),
              (check_project, dict(row, project=dict(row["project"], line=row["project"]["line"] + 1)))]
    for check, wrong in broken:
        with pytest.raises(AssertionError):
            check(wrong)


@pytest.mark.skipif(not os.environ.get("LLAVA_SRC"), reason="LLAVA_SRC: a checkout of haotian-liu/LLaVA at c121f04")
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_llavas_lines_are_verbatim(row):
    llava, root = row["llava"], Path(os.environ["LLAVA_SRC"])
    text = (root / llava["file"]).read_text()
    if llava["line"] is None:
        assert f'"{llava["find"]}"' not in text
    else:
        assert text.splitlines()[llava["line"] - 1] == llava["text"]
    if row["rule"] == "default":  # the script really leaves it out
        assert f"--{llava['find'].rstrip(':')} " not in (root / SCRIPTS[row["stage"]]).read_text()

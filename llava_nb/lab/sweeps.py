"""Reading the recipe sweeps under ``data/gpu/`` and the ceilings they are judged against.

* ``load_sweep(path)``: a sweep's JSON lines as a table, one row per run, the per-type accuracies as columns.
* ``by_setting(runs)``: runs that differ only in their seed, grouped: mean accuracy, its range, and how many of the
  runs reached the target. Seeds matter here: a yes/no type is either learned or left at its prior, so one run
  per setting says little.
* ``best_accuracy_from(qtype, features)``: the best accuracy any answerer can reach on a question type when it
  knows only some facts about the scene (and the question). "Is there a shape at the top left?" answered from the
  number of shapes alone is right 3 times in 4, so a model at 75% on it need not look at *where* anything is.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

from ..data.synthetic import QUESTION_TYPES, question, random_scene

#: what an answerer may know about a scene, besides the question's text
FEATURES = {
    "nothing": lambda scene: (),
    "count": lambda scene: (len(scene),),
    "colour": lambda scene: (scene[0].colour,),
    "shape": lambda scene: (scene[0].shape,),
    "positions": lambda scene: tuple(o.position for o in scene),
}


def best_accuracy_from(qtype: str, features: tuple[str, ...] = ("count",), n: int = 20000, seed: int = 0) -> float:
    """Accuracy of the best answerer that sees the question and only ``features`` of the scene (keys of
    ``FEATURES``), estimated on ``n`` random scenes: for every (question, features) value it answers the most
    frequent short answer; the share of answers that this gets right is the ceiling."""
    if qtype not in QUESTION_TYPES:
        raise ValueError(f"unknown question type {qtype!r}; choose one of {', '.join(QUESTION_TYPES)}")
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown feature(s) {sorted(unknown)}; choose from {', '.join(FEATURES)}")
    rng = random.Random(f"{seed}-ceiling")
    answers = defaultdict(Counter)  # (question, features) -> Counter of short answers
    for _ in range(n):
        scene = random_scene(rng)
        q, short, _ = question(scene, qtype, rng)
        key = (q, *(value for f in features for value in FEATURES[f](scene)))
        answers[key][short] += 1
    return sum(c.most_common(1)[0][1] for c in answers.values()) / n


def load_sweep(path: Path | str):
    """A sweep's JSON lines (``data/gpu/sweep_*.jsonl``) as a DataFrame: one row per run, ``by_type`` spread
    into one column per question type, and ``setting``, the run's name without its seed; lines that record an
    error are dropped (and counted in ``attrs``)."""
    import pandas as pd

    runs = pd.read_json(path, lines=True)
    failed = int(runs["error"].notna().sum()) if "error" in runs else 0
    if failed:
        runs = runs[runs["error"].isna()].drop(columns="error")
    types = pd.DataFrame(list(runs["by_type"]), index=runs.index)
    runs = pd.concat([runs.drop(columns="by_type"), types], axis=1)
    runs["setting"] = runs["name"].str.replace(r",? seed \d+$", "", regex=True)
    runs.attrs["failed"] = failed
    return runs


def by_setting(runs, target: float = 0.9):
    """Group runs with the same settings (``data``, ``hp``, ``stage1``, ``pretrain``) that differ only in their
    seed: number of runs, mean and range of held-out accuracy, mean accuracy on the two yes/no types, how many runs
    reached ``target``, and whether stage 2's batches were grouped by length. Each group is labelled by its first
    run's ``setting`` (``load_sweep``: the name without the seed)."""
    import json

    import pandas as pd

    cols = [c for c in ("data", "hp", "stage1", "pretrain") if c in runs]
    key = runs[cols].apply(lambda row: json.dumps([row[c] if isinstance(row[c], dict) else {} for c in cols],
                                                  sort_keys=True), axis=1)
    grouped_by_length = runs["hp"].apply(lambda hp: bool(isinstance(hp, dict) and hp.get("group_by_length")))
    label = runs["setting"]
    label = label.where(~grouped_by_length | label.str.contains("grouped"), label + ", grouped")
    g = runs.assign(key=key, reached=runs["acc"] >= target, grouped=grouped_by_length).groupby("key", sort=False)
    table = pd.DataFrame({"setting": label.groupby(key, sort=False).first(), "runs": g.size(),
                          "mean accuracy": g["acc"].mean(), "lowest": g["acc"].min(), "highest": g["acc"].max(),
                          "exists": g["exists"].mean(), "position": g["position"].mean(),
                          f"runs ≥ {target:.0%}": g["reached"].sum(), "grouped by length": g["grouped"].first()})
    return table.set_index("setting")

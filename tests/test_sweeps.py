"""llava_nb.lab.sweeps: answer ceilings from partial knowledge, and the sweep tables."""

import json

import pytest

from llava_nb.paths import DATA_DIR
from llava_nb.lab.sweeps import best_accuracy_from, by_setting, load_sweep


def test_position_from_the_count_alone_is_right_three_times_in_four():
    # 1-4 shapes, equally likely, in distinct quadrants: P(yes | n) = n/4, so the best guess from n is right with
    # probability mean(max(n/4, 1 - n/4)) = (3/4 + 1/2 + 3/4 + 1) / 4 = 3/4
    assert best_accuracy_from("position", ("count",)) == pytest.approx(0.75, abs=0.01)
    assert best_accuracy_from("position", ()) == pytest.approx(0.625, abs=0.01)  # always "yes"
    assert best_accuracy_from("position", ("positions",)) == 1.0


def test_exists_needs_the_colour():
    # finitely many scenes: each (question, count) cell's majority wins a little by chance, hence the tolerance
    assert best_accuracy_from("exists", ("count",)) == pytest.approx(0.5, abs=0.03)
    assert best_accuracy_from("exists", ("colour",)) == 1.0
    assert best_accuracy_from("colour", ("colour",)) == 1.0 and best_accuracy_from("count", ("count",)) == 1.0


def test_ceiling_errors():
    with pytest.raises(ValueError, match="unknown question type 'size'"):
        best_accuracy_from("size")
    with pytest.raises(ValueError, match="unknown feature"):
        best_accuracy_from("count", ("area",))


def test_by_setting_groups_seeds_and_counts_runs_over_target(tmp_path):
    runs = [{"name": f"a, seed {s}", "data": {}, "hp": {"lr": 1}, "acc": acc,
             "by_type": {"exists": acc, "position": 0.7}} for s, acc in ((0, 0.95), (1, 0.85))]
    runs += [{"name": "a", "data": {}, "hp": {"lr": 1, "group_by_length": True}, "acc": 0.8,
              "by_type": {"exists": 0.5, "position": 0.7}}, {"name": "broken", "error": "Traceback"}]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))
    table = load_sweep(path)
    assert len(table) == 3 and table.attrs["failed"] == 1 and list(table["setting"]) == ["a", "a", "a"]
    summary = by_setting(table)
    assert list(summary.index) == ["a", "a, grouped"]
    assert summary.loc["a", "runs"] == 2 and summary.loc["a", "runs ≥ 90%"] == 1
    assert summary.loc["a", "mean accuracy"] == pytest.approx(0.9) and summary.loc["a, grouped", "grouped by length"]


def test_committed_recipe_sweep_supports_the_recipe():
    """What chapter 04 says of data/gpu/sweep_recipe.jsonl: grouping batches by length stalls the yes/no questions
    (hardly any grouped run reaches 90%), and every setting run both ways does better without it."""
    runs = load_sweep(DATA_DIR / "gpu" / "sweep_recipe.jsonl")
    grouped = runs["hp"].apply(lambda hp: bool(hp.get("group_by_length")))
    assert (runs[grouped]["acc"] >= 0.9).mean() < 0.1
    rest = runs.apply(lambda r: json.dumps([r["data"], {k: v for k, v in r["hp"].items() if k != "group_by_length"},
                                            r["stage1"], r["pretrain"]], sort_keys=True), axis=1)
    pairs = [k for k in set(rest) if {True, False} <= set(grouped[rest == k])]
    assert len(pairs) >= 2
    for k in pairs:
        assert runs[(rest == k) & ~grouped]["acc"].mean() > runs[(rest == k) & grouped]["acc"].mean()


def test_committed_recipe_is_what_the_sweep_supports():
    """The tiny stage-2 recipe (14 epochs, eager attention): on the seeds that ran both, 14 epochs beat 12 in mean
    accuracy; over ten seeds it averages above the target, without reaching it in every seed (chapter 04)."""
    from llava_nb.training.config import TINY_HYPERPARAMS

    recipe = TINY_HYPERPARAMS[2]
    assert (recipe["epochs"], recipe["attn_implementation"]) == (14, "eager")
    runs = load_sweep(DATA_DIR / "gpu" / "sweep_recipe.jsonl")
    now, twelve = (runs[(runs["setting"] == s) & (runs["seed"] <= 4)]["acc"].mean()
                   for s in ("recipe, eager attention, 14 epochs", "recipe, eager attention"))
    assert now > twelve
    ten = by_setting(runs).loc["recipe, eager attention, 14 epochs"]
    assert ten["runs"] == 10 and ten["mean accuracy"] > 0.9 and ten["runs ≥ 90%"] < ten["runs"]

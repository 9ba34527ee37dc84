"""A run's output folder: a reader's files are never deleted or overwritten, re-running a stopped run continues it,
a finished one is reported as done, and checkpoints appear only when complete, the latest few kept."""

import subprocess
import sys

import pytest

from llava_nb.data.synthetic import generate
from llava_nb.training.api import train
from llava_nb.training.output_dir import OutputDirError

FAST = dict(num_processes=1, batch_size=8, log_every=0, max_steps=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = generate(tmp_path_factory.mktemp("data"), n_images=16, n_test=4, seed=1)
    return dict(data=d["captions"], image_folder=d["image_folder"])


def test_a_folder_with_a_readers_files_is_refused_and_force_moves_it_aside(data, tmp_path):
    mine = tmp_path / "results"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "notes.txt").write_text("my notes")
    (mine / "result.json").write_text("{}")
    with pytest.raises(OutputDirError, match="files train.. did not write.*move it aside .force=True, --force"):
        train("tiny-llava-1.5", 1, output_dir=mine, **data, **FAST)
    assert (mine / "checkpoints" / "notes.txt").read_text() == "my notes" and (mine / "result.json").read_text() == "{}"
    r = train("tiny-llava-1.5", 1, output_dir=mine, force=True, **data, **FAST)
    assert r["steps"] == 4 and (mine / "final").is_dir()
    assert (tmp_path / "results.old-1" / "checkpoints" / "notes.txt").read_text() == "my notes"


def test_another_runs_folder_is_refused(data, tmp_path):
    train("tiny-llava-1.5", 1, output_dir=tmp_path / "run", **data, **FAST)
    with pytest.raises(OutputDirError, match="another run's files"):
        train("tiny-llava-1.5", 1, output_dir=tmp_path / "run", lr=1e-2, **data, **FAST)


def test_the_same_command_again_continues_a_stopped_run_and_then_reports_it_done(data, tmp_path, capsys):
    out = tmp_path / "run"
    full = train("tiny-llava-1.5", 1, output_dir=tmp_path / "full", **data, **FAST)
    stopped = train("tiny-llava-1.5", 1, output_dir=out, save_every=1, stop_after=2, **data, **FAST)
    assert stopped["steps"] == 2 and not stopped["finished"]
    again = train("tiny-llava-1.5", 1, output_dir=out, save_every=1, **data, **FAST)  # as after a Ctrl-C
    assert "continuing from" in capsys.readouterr().out and again["finished"] and "cached" not in again
    assert again["losses"] == pytest.approx(full["losses"], abs=1e-6)  # steps 3 and 4 continued steps 1 and 2
    assert train("tiny-llava-1.5", 1, output_dir=out, save_every=1, **data, **FAST)["cached"]
    # the latest two checkpoints, none half-written
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_3", "step_4"]


def test_a_finished_resumed_run_is_reported_done(data, tmp_path):
    out = tmp_path / "run"
    train("tiny-llava-1.5", 1, output_dir=out, save_every=2, stop_after=2, **data, **FAST)
    resumed = train("tiny-llava-1.5", 1, output_dir=out, resume_from=str(out / "checkpoints" / "step_2"), **data, **FAST)
    assert resumed["finished"] and "cached" not in resumed
    assert train("tiny-llava-1.5", 1, output_dir=out, resume_from=str(out / "checkpoints" / "step_2"), **data,
                 **FAST)["cached"]


def test_the_command_line_refuses_in_one_line(data, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "paper.tex").write_text("draft")
    done = subprocess.run([sys.executable, "-m", "llava_nb", "train", "--model", "tiny-llava-1.5", "--stage", "1",
                           "--data", str(data["data"]), "--image-folder", str(data["image_folder"]),
                           "--output-dir", str(tmp_path / "mine")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--force" in done.stderr
    assert "did not write" in done.stderr and (tmp_path / "mine" / "paper.tex").read_text() == "draft"


def test_resuming_with_other_settings_is_refused(data, tmp_path):
    """The restored optimizer keeps the checkpoint's learning rate and the data position its batch: a resume that
    asks for another lr or batch would record settings it did not train with."""
    out = tmp_path / "run"
    train("tiny-llava-1.5", 1, output_dir=out, save_every=2, stop_after=2, **data, **FAST)
    checkpoint = out / "checkpoints" / "step_2"
    assert (checkpoint / "run.json").is_file()
    for change, says in (({"lr": 0.5}, r"lr .* -> 0\.5"), ({"batch_size": 4}, r"batch_size 8 -> 4")):
        with pytest.raises(OutputDirError, match=rf"step_2 was trained with other settings \(.*{says}"):
            train("tiny-llava-1.5", 1, output_dir=tmp_path / "elsewhere", resume_from=str(checkpoint),
                  **data, **{**FAST, **change})
        assert not (tmp_path / "elsewhere").exists()  # refused before anything was written
    resumed = train("tiny-llava-1.5", 1, output_dir=tmp_path / "elsewhere", resume_from=str(checkpoint), **data,
                    **FAST)
    assert resumed["finished"] and resumed["steps"] == 4

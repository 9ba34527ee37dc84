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
    # the explicit way to change the learning rate from a checkpoint on: resume_lr scales the schedule
    with pytest.raises(OutputDirError, match=r"keep lr=.* add --set resume_lr=0\.5"):
        train("tiny-llava-1.5", 1, output_dir=tmp_path / "changed", resume_from=str(checkpoint), **data,
              **{**FAST, "lr": 0.5})
    lr = resumed["hyperparams"]["lr"]
    changed = train("tiny-llava-1.5", 1, output_dir=tmp_path / "changed", resume_from=str(checkpoint), **data,
                    resume_lr=lr / 4, **FAST)
    assert changed["steps"] == 4 and changed["lrs"][:2] == resumed["lrs"][:2]  # the first two steps, restored
    assert changed["lrs"][2:] == pytest.approx([x / 4 for x in resumed["lrs"][2:]], rel=1e-6)
    assert resumed["lrs"][2] > 0


def test_resume_lr_needs_a_checkpoint(data, tmp_path):
    with pytest.raises(ValueError, match=r"resume_lr=0\.001 changes the learning rate of a resumed run"):
        train("tiny-llava-1.5", 1, output_dir=tmp_path / "new", resume_lr=1e-3, **data, **FAST)
    assert not (tmp_path / "new").exists()


def test_a_tiny_stage_2_checks_its_resume_settings_before_stage_1_trains(data, tmp_path, monkeypatch):
    """Stage 2 of a tiny name trains stage 1 first: a resume that will be refused must be refused before that."""
    import json

    from llava_nb.training import api

    checkpoint = tmp_path / "step_2"
    checkpoint.mkdir()
    (checkpoint / "run.json").write_text(json.dumps({"spec": {"stage": 2, "config": {"lr": 0.5}}}))
    monkeypatch.setattr(api, "default_output_dir", lambda *a: tmp_path / "runs" / "-".join(map(str, a[1:])))

    def launched(*args):
        raise AssertionError("a run was launched")

    monkeypatch.setattr(api, "_launch_and_collect", launched)
    with pytest.raises(OutputDirError, match=r"step_2 was trained with other settings .* keep lr=0\.5 "):
        train("tiny-llava-1.5", 2, output_dir=tmp_path / "stage2", resume_from=str(checkpoint), **data, **FAST)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "stage2").exists()


def test_a_result_its_launcher_never_completed_is_not_reported_done(data, tmp_path):
    """Workers write result.json; train() then adds what it measured around them (seconds_total, stage1). A launcher
    stopped in between (a notebook cell's timeout) leaves a result that must not be returned as the finished run."""
    import json

    out = tmp_path / "run"
    first = train("tiny-llava-1.5", 1, output_dir=out, **data, **FAST)
    assert "seconds_total" in first and train("tiny-llava-1.5", 1, output_dir=out, **data, **FAST)["cached"]
    result = json.loads((out / "result.json").read_text())
    del result["seconds_total"]
    (out / "result.json").write_text(json.dumps(result))
    again = train("tiny-llava-1.5", 1, output_dir=out, **data, **FAST)
    assert "cached" not in again and again["finished"] and "seconds_total" in again


def test_a_checkpoint_from_before_a_setting_existed_still_resumes(tmp_path):
    """A setting added to TrainConfig later is absent from an older checkpoint's run.json: at its default it matches."""
    import json

    from llava_nb.training.output_dir import check_resume_settings

    checkpoint = tmp_path / "step_2"
    checkpoint.mkdir()
    (checkpoint / "run.json").write_text(json.dumps({"spec": {"stage": 1, "config": {"lr": 1e-3}}}))
    check_resume_settings(checkpoint, {"stage": 1, "config": {"lr": 1e-3, "images_outside_folder": False}})
    with pytest.raises(OutputDirError, match=r"images_outside_folder None -> True"):
        check_resume_settings(checkpoint, {"stage": 1, "config": {"lr": 1e-3, "images_outside_folder": True}})


def test_a_readers_folder_in_use_by_another_run_is_refused_at_once(data, tmp_path):
    """Two runs writing one folder would mix their checkpoints: the second is refused before it writes anything."""
    from llava_nb.training.output_dir import run_lock

    out = tmp_path / "run"
    with run_lock(out, managed=False):  # another notebook's run into this folder, in progress
        with pytest.raises(OutputDirError, match=r"output_dir .*run is in use by another run right now"):
            train("tiny-llava-1.5", 1, output_dir=out, **data, **FAST)
        assert not out.exists()
    assert train("tiny-llava-1.5", 1, output_dir=out, **data, **FAST)["finished"]


def test_two_processes_asking_for_the_same_cached_run_take_turns(data, capsys):
    """Two notebooks (or two test workers) that ask for the same cached run at once: the second waits for the first
    and returns its result, instead of training into the same folder beside it."""
    import json
    import shutil
    import time

    from llava_nb.methods.registry import get_method
    from llava_nb.training.api import default_output_dir

    seed = 8101  # a cache folder of its own
    out = default_output_dir("tiny-llava-1.5", 1, get_method("ddp").for_stage(1).key, seed)
    shutil.rmtree(out, ignore_errors=True)
    call = {"model": "tiny-llava-1.5", "stage": 1, "seed": seed, **{k: str(v) for k, v in data.items()}, **FAST}
    first = subprocess.Popen([sys.executable, "-c", "import json, sys; from llava_nb.training.api import train; "
                              "print(json.dumps(train(**json.loads(sys.argv[1]))))", json.dumps(call)],
                             stdout=subprocess.PIPE, text=True)
    for _ in range(600):  # until the first process has taken the folder (its manifest is written under the lock)
        if (out / "run.json").exists() or first.poll() is not None:
            break
        time.sleep(0.1)
    second = train(**call)
    printed, _ = first.communicate(timeout=300)
    assert first.returncode == 0
    assert "waiting for it to finish (its result is used if it is this same run)" in capsys.readouterr().out
    assert second["cached"] and second["losses"] == json.loads(printed.splitlines()[-1])["losses"]
    shutil.rmtree(out)

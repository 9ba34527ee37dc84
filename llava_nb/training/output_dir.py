"""A run's output folder: what is in it is never deleted or overwritten unless it is the run's own.

    <output_dir>/run.json                 written as a run starts: the settings its files belong to (the fingerprint)
    <output_dir>/checkpoints/step_N       every save_every steps, written as step_N.partial and renamed when
                                          complete; the last save_total_limit are kept
    <output_dir>/result.json, final/      when it ends

Before any process starts, ``prepare_output`` looks at the folder a run is given:

* new or empty: a fresh run;
* this run's own (``run.json`` with the same settings; where it stops, ``stop_after``, and how it saves and resumes
  are not settings of what it computes): the cached result if it finished; otherwise it continues from its latest
  complete checkpoint, as the Hugging Face Trainer's ``resume_from_checkpoint=True`` does, or starts over if there
  is none;
* anything else (files ``train()`` did not write, or another run's): refused, unless ``resume_from`` says to continue
  there, or ``force`` moves the old folder aside to ``<name>.old-<k>``: nothing is deleted. ``force`` on the run's
  own folder moves it aside too.

The project's own cache folders (``default_output_dir``, under ``.cache/runs``) are the exception: they hold no
reader's files, and a run with other settings, or ``force``, replaces what is there.

One run at a time per folder (``run_lock``): two notebooks that ask for the same cached run take turns, and the
second gets the first's result; a second run into a reader's folder that is in use is refused at once.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from ..errors import LlavaNbError
from ..paths import CACHE_DIR, locked

MANIFEST = "run.json"
CHECKPOINT = re.compile(r"step_(\d+)")


class OutputDirError(LlavaNbError):
    """The output folder holds files that are not this run's own."""


def run_lock(out: Path, managed: bool):
    """A context that holds ``out`` for one run (from ``prepare_output`` until ``result.json`` is written), so that
    two processes never write one folder. The lock file lives in the cache (``locks/``), never beside a reader's
    folder. A cache folder (``managed``) in use: wait, then use the other run's result if it is this run (if not,
    replace it, as for any cache folder: a process still reading the old run's files after its ``train()`` returned
    is not protected, so runs with other settings get folders of their own). A reader's folder in use:
    ``OutputDirError`` at once. (Under ``accelerate launch`` every rank calls ``train()`` for the same run: the
    caller takes no lock there.)"""
    key = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:16]

    def busy():
        if not managed:
            raise OutputDirError(f"output_dir {out} is in use by another run right now (another notebook or process); "
                                 "wait for it to finish, or choose another folder")
        print(f"another process is running a run in {out}: waiting for it to finish (its result is used if it is "
              "this same run)", flush=True)

    return locked(out, lock_file=CACHE_DIR / "locks" / f"{Path(out).name[:80]}-{key}.lock", busy=busy)


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint of the highest step in ``out/checkpoints`` (``.partial`` folders are incomplete)."""
    steps = _complete_checkpoints(Path(out) / "checkpoints")
    return steps[-1][1] if steps else None


def _complete_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete ``step_N`` in ``folder``, by step."""
    return sorted((int(m.group(1)), p) for p in folder.glob("step_*")
                  if p.is_dir() and (m := CHECKPOINT.fullmatch(p.name)))


def prepare_output(out: Path, fingerprint: dict, force: bool, resume_from: str | None,
                   managed: bool) -> tuple[dict | None, str | None]:
    """(the cached result of this run finished before or None, the checkpoint to resume from or None); readies
    ``out`` for the run and writes its manifest. Raises ``OutputDirError`` for a folder that is not the run's own."""
    out = Path(out)
    own = _manifest(out) == fingerprint
    if own and not force:
        finished = _finished_result(out, fingerprint)
        if finished is not None:  # done, however it got there (resumed or not)
            return finished, None
        latest = latest_checkpoint(out) if resume_from is None else None
        if latest is not None:
            print(f"continuing from {latest}, this run's latest complete checkpoint (force=True starts over, "
                  "moving this folder aside)", flush=True)
            resume_from = str(latest)
    elif resume_from is None and out.is_dir() and any(out.iterdir()):
        if managed:
            shutil.rmtree(out)
        elif force:
            print(f"moved the earlier contents of {out} to {_move_aside(out)}", flush=True)
        else:
            what = "another run's files (other settings)" if (out / MANIFEST).exists() else "files train() did not write"
            raise OutputDirError(f"output_dir {out} holds {what}; choose a new folder, continue there from one of "
                                 "its checkpoints (resume_from, --resume-from), or move it aside (force=True, --force; "
                                 "nothing is deleted)")
    for stale in out.glob("error-rank*.txt"):  # this run's own earlier failure
        stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps({"spec": fingerprint}, indent=1) + "\n")
    return None, resume_from


def finish_checkpoint(partial: Path, keep: int | None) -> Path:
    """Rename a complete ``step_N.partial`` to ``step_N`` (replacing this run's own earlier ``step_N``), then keep
    the last ``keep`` checkpoints (None: all). Main process only, after every process has written its part."""
    final = partial.with_suffix("")
    if final.exists():
        shutil.rmtree(final)
    shutil.copy(partial.parent.parent / MANIFEST, partial / MANIFEST)  # the settings it was trained with
    partial.rename(final)
    if keep:
        for _, old in _complete_checkpoints(final.parent)[:-keep]:
            shutil.rmtree(old)
    return final


def check_resume_settings(checkpoint, fingerprint: dict) -> None:
    """Raise when the run that wrote ``checkpoint`` had other settings than this one (where it writes aside):
    the restored optimizer, scheduler and data position would not follow them. The one change allowed is explicit:
    ``resume_lr`` sets a new learning rate from the checkpoint on. Checkpoints written before the settings were
    saved beside them are not checked, and a setting added since (absent from the checkpoint's) counts as equal
    when this run leaves it at its default."""
    import dataclasses

    from .config import TrainConfig

    saved = _manifest(Path(checkpoint))
    if saved is None:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    differ = {k: (saved.get(k), fingerprint.get(k)) for k in set(saved) | set(fingerprint)
              if k not in ("output_dir", "config") and saved.get(k) != fingerprint.get(k)}
    old, new = saved.get("config", {}), fingerprint.get("config", {})
    differ.update({k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
                   if old.get(k) != new.get(k) and k != "resume_lr"
                   and not (k not in old and new.get(k) == defaults.get(k, object()))})
    if differ:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(differ.items())[:6])
        lr = (f"; to change the learning rate from here, keep lr={differ['lr'][0]!r} and add --set resume_lr="
              f"{differ['lr'][1]!r} (resume_lr=)" if "lr" in differ else "")
        raise OutputDirError(f"{checkpoint} was trained with other settings ({listed}); resume with the settings it "
                             "was trained with, since the restored optimizer, scheduler and data position follow "
                             f"those, or start a new run{lr}")


def _manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text()).get("spec")
    except (OSError, ValueError, AttributeError):
        return None


def _finished_result(out: Path, fingerprint: dict) -> dict | None:
    try:
        previous = json.loads((out / "result.json").read_text())
    except (OSError, ValueError):
        return None
    # "seconds_total" is written by train() itself once it has collected the workers' result: a result.json without
    # it was left by workers whose launcher was stopped (a notebook cell's timeout, say) and lacks what train() adds
    if previous.get("spec") == fingerprint and previous.get("finished") and "seconds_total" in previous:
        return {**previous, "cached": True}
    return None


def _move_aside(out: Path) -> Path:
    k = 1
    while (aside := out.with_name(f"{out.name}.old-{k}")).exists():
        k += 1
    out.rename(aside)
    return aside

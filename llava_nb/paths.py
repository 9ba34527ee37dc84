"""Where the package finds the book's committed data (tokenizer, images, benchmarks), and how a folder that several
processes may need at once (synthetic data, pretrained parts) is built once."""

import contextlib
import os
import shutil
from pathlib import Path

#: Repository root when the package is installed editable (as ``make`` does).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: The ``data/`` folder; ``LLAVA_NB_DATA`` points elsewhere if the package is installed without the repository.
DATA_DIR = Path(os.environ.get("LLAVA_NB_DATA", REPO_ROOT / "data"))

TOKENIZER_DIR = DATA_DIR / "tokenizer"
IMAGES_DIR = DATA_DIR / "images"
BENCHMARKS_DIR = DATA_DIR / "benchmarks"

#: Where runs, synthetic data and the book's fetched assets are cached; ``LLAVA_NB_CACHE`` points elsewhere.
CACHE_DIR = Path(os.environ.get("LLAVA_NB_CACHE", REPO_ROOT / ".cache"))


@contextlib.contextmanager
def locked(folder: Path, lock_file: Path | None = None, busy=None):
    """Hold an exclusive lock on ``folder`` (a ``.lock`` file beside it, or ``lock_file``) for the ``with`` block.
    When another process holds it, ``busy()`` is called first (to say so, or to raise instead of waiting), then
    this one waits its turn. (POSIX ``fcntl.flock``; released when the block ends or the process dies.)"""
    import fcntl

    lock_file = Path(lock_file) if lock_file else Path(folder).with_name(Path(folder).name + ".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy is not None:
                busy()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(folder: Path, marker: str, build, rebuild: bool = False) -> Path:
    """Build ``folder`` with ``build(tmp)`` unless ``folder/marker`` exists (or always, with ``rebuild``).

    ``build`` writes into a temporary sibling folder, which is renamed into place, so a folder whose marker exists
    is whole. The ranks of ``accelerate launch -m llava_nb train`` each run ``train()``, so each would build a
    missing folder at once, and one rank's clean-up would delete files another had just written ("missing image
    file" in a worker). Under ``locked`` they take turns: the first builds, the others find the folder built."""
    folder = Path(folder)
    if (folder / marker).exists() and not rebuild:
        return folder
    with locked(folder):
        if rebuild or not (folder / marker).exists():
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            build(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
    return folder

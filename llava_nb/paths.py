"""Where the package finds the book's committed data (tokenizer, images, benchmarks), and a lock for folders that
several processes may prepare at once."""

import contextlib
import os
from pathlib import Path

#: Repository root when the package is installed editable (as ``make`` does).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: The ``data/`` folder; ``LLAVA_NB_DATA`` points elsewhere if the package is installed without the repository.
DATA_DIR = Path(os.environ.get("LLAVA_NB_DATA", REPO_ROOT / "data"))

TOKENIZER_DIR = DATA_DIR / "tokenizer"
IMAGES_DIR = DATA_DIR / "images"
BENCHMARKS_DIR = DATA_DIR / "benchmarks"


@contextlib.contextmanager
def locked(folder: Path):
    """Hold an exclusive lock on ``folder`` (a ``.lock`` file beside it) for the ``with`` block.

    The ranks of ``accelerate launch -m llava_nb train`` each run ``train()``, so each would generate the missing
    synthetic data or pretrained parts into the same folder at once, and one rank's clean-up would delete files
    another had just written ("missing image file" in a worker). Under the lock they take turns: the first one
    prepares the folder, the others find it ready. (POSIX ``fcntl.flock``; released when the block ends or the
    process dies.)"""
    import fcntl

    lock_file = Path(folder).with_name(Path(folder).name + ".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

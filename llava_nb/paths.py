"""Where the package finds the book's committed data (tokenizer, images, benchmarks)."""

import os
from pathlib import Path

#: Repository root when the package is installed editable (as ``make`` does).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: The ``data/`` folder; ``LLAVA_NB_DATA`` points elsewhere if the package is installed without the repository.
DATA_DIR = Path(os.environ.get("LLAVA_NB_DATA", REPO_ROOT / "data"))

TOKENIZER_DIR = DATA_DIR / "tokenizer"
IMAGES_DIR = DATA_DIR / "images"
BENCHMARKS_DIR = DATA_DIR / "benchmarks"

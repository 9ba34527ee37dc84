"""The book's sample photographs (see ``data/images/README.md`` for sources and licences)."""

from __future__ import annotations

from pathlib import Path

from ..paths import IMAGES_DIR

SAMPLE_IMAGES = {"astronaut": "astronaut.jpg", "coffee": "coffee.jpg"}


def sample_image(name: str = "astronaut"):
    """A committed sample photograph as an RGB ``PIL.Image``."""
    from PIL import Image

    if name not in SAMPLE_IMAGES:
        raise FileNotFoundError(f"no sample image {name!r}; choose one of {', '.join(SAMPLE_IMAGES)}")
    path = Path(IMAGES_DIR) / SAMPLE_IMAGES[name]
    if not path.exists():
        raise FileNotFoundError(f"sample image missing at {path}; restore it with `git checkout -- {path}`")
    with Image.open(path) as im:
        return im.convert("RGB")

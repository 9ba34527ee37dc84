"""Local checkpoints in place of the Hub: ``LLAVA_NB_CHECKPOINTS=DIR``.

With the variable set, every Hub id this package would download (``llava-hf/llava-1.5-7b-hf``, or a known name
such as ``llava-1.5-7b`` that has one) is read from ``DIR/<hub id>`` instead, e.g.
``DIR/llava-hf/llava-1.5-7b-hf``: a folder written by ``python -m llava_nb make-checkpoint`` (random weights, for
machines that cannot download) or a real checkpoint copied there. A missing folder is an error that names the
variable and the command that writes it; nothing is downloaded. Without the variable, Hub ids stay Hub ids.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import LlavaNbError

ENV_VAR = "LLAVA_NB_CHECKPOINTS"


class CheckpointMissingError(LlavaNbError):
    """``LLAVA_NB_CHECKPOINTS`` is set and does not hold the checkpoint asked for."""


def checkpoints_dir() -> Path | None:
    """The folder ``LLAVA_NB_CHECKPOINTS`` names, or None when it is unset or empty."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def local_path(hub: str, root: Path | None = None) -> Path | None:
    """Where ``LLAVA_NB_CHECKPOINTS`` (or ``root``) keeps the Hub id ``hub``: ``root/owner/name``; None without one."""
    root = root if root is not None else checkpoints_dir()
    return None if root is None else root.joinpath(*hub.split("/"))


def resolve(source: str) -> str:
    """``source`` itself, or the local folder of its checkpoint when ``LLAVA_NB_CHECKPOINTS`` is set.

    ``source``: a checkpoint folder (returned as it is), a known model name, or a Hub id. Tiny names and names
    without a public checkpoint are returned unchanged (their callers build them or say so)."""
    root = checkpoints_dir()
    if root is None or Path(source).is_dir():
        return source
    from .specs import hub_id, resolve_name

    try:
        hub = hub_id(resolve_name(source))
    except LlavaNbError:
        hub = source if source.count("/") == 1 else None  # an id this package does not know
    if hub is None:
        return source
    folder = local_path(hub, root)
    if (folder / "config.json").is_file():
        return str(folder)
    like = _known_name(hub)
    how = (f"python -m llava_nb make-checkpoint --like {like} --out {folder}" if like
           else f"copy the checkpoint's files into {folder}")
    raise CheckpointMissingError(f"{hub} is not in {ENV_VAR}={root} (no {folder}/config.json); write it with "
                                 f"`{how}`, or unset {ENV_VAR} to use the Hub")


def _known_name(hub: str) -> str | None:
    """The model name whose public checkpoint is ``hub`` (make-checkpoint's ``--like``), or None."""
    from .specs import KNOWN_MODELS, hub_id

    return next((name for name in KNOWN_MODELS if not name.startswith("tiny-") and hub_id(name) == hub), None)

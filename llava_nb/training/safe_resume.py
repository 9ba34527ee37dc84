"""Resuming never runs code from the checkpoint folder.

A pickle names the functions it calls as it loads (its GLOBAL opcodes), and loading calls them: a checkpoint can
run any code its author chose. Accelerate's ``load_state`` reads the optimizer, the RNG states and registered
objects with ``torch.load(weights_only=False)`` (accelerate 1.15 ``checkpointing.py:340``), DeepSpeed reads its
shards the same way, and ``torch.distributed.checkpoint`` reads its ``.metadata`` index with ``pickle.load``
(torch 2.13 ``distributed/checkpoint/filesystem.py:930``). So before any of them sees a folder, every file that
one of them could unpickle is *inspected*, never executed:

* a ``torch.save`` file (a zip): ``torch.serialization.get_unsafe_globals_in_checkpoint`` lists the callables its
  pickle names beyond torch's ``weights_only`` allow-list, reading the pickle's opcodes without running them;
* any other file: an ``Unpickler`` whose ``find_class`` refuses every callable not listed below (the restricted
  loading of Python's ``pickle`` documentation), pickle after pickle to the end of the file, so that only listed
  constructors ever run.

A checkpoint is resumed only when every callable is torch's own safe set or one of ``ZIP_ALLOWED`` and
``PICKLE_ALLOWED``: what Accelerate, DeepSpeed and DCP write for the methods here (numpy's RNG arrays, two
DeepSpeed state classes, DCP's metadata records). Anything else is refused, naming the file and the callable.
Files that are never unpickled (safetensors, JSON, DeepSpeed's ``latest`` tag and its ``zero_to_fp32.py``, DCP's
``.distcp`` payloads, which DCP reads with ``weights_only=True``) are not inspected.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

from ..errors import LlavaNbError

#: callables a torch.save file may name beyond torch's weights_only allow-list
ZIP_ALLOWED = {
    "numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
    "deepspeed.runtime.zero.config.ZeroStageEnum",  # ZeRO optimizer states: the stage
    "deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
}
ZIP_ALLOWED_PATTERN = re.compile(r"numpy\.dtypes\.\w+DType")  # numpy >= 1.25 pickles dtypes by class
#: callables a plain pickle (DCP's .metadata) may name
PICKLE_ALLOWED = {
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"), ("collections", "OrderedDict"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")),
}
#: never unpickled by a resume (module docstring)
NOT_PICKLES = {".safetensors", ".json", ".py", ".distcp", ".md", ".txt"}


class UnsafeCheckpointError(LlavaNbError):
    """A checkpoint file would call something other than the listed constructors when loaded."""


def check_resume_folder(folder) -> None:
    """Raise if ``folder`` is not a folder, or holds a file whose loading would call an unlisted callable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LlavaNbError(f"resume_from {str(folder)!r} is not a folder; pass a checkpoint that train(save_every=N) "
                           "wrote, e.g. <output_dir>/checkpoints/step_100")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix in NOT_PICKLES or path.name == "latest":
            continue
        refused = unlisted_callables(path)
        if refused:
            raise UnsafeCheckpointError(
                f"{path} would call {', '.join(sorted(set(refused)))} when loaded, and a checkpoint may only hold "
                "tensors, numbers and the classes listed in llava_nb.training.safe_resume; not resuming from it "
                "(loading a pickle runs whatever it names: resume only from checkpoints your own runs wrote)")


def unlisted_callables(path: Path) -> list[str]:
    """The callables loading ``path`` would call that are neither torch's safe ones nor listed here."""
    if zipfile.is_zipfile(path):
        import torch

        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as err:  # not a torch.save file: nothing here reads it, so nothing should be there
            return [f"(not a torch.save file: {err})"]
        return [n for n in names if n not in ZIP_ALLOWED and not ZIP_ALLOWED_PATTERN.fullmatch(n)]
    return _plain_pickle_callables(path)


class _ListedOnly(pickle.Unpickler):
    """An unpickler that refuses (and records) every callable outside ``PICKLE_ALLOWED``, and persistent ids."""

    def __init__(self, file):
        super().__init__(file)
        self.refused: list[str] = []

    def find_class(self, module: str, name: str):
        import torch

        if (module, name) in PICKLE_ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                   torch.dtype)):
            return super().find_class(module, name)
        self.refused.append(f"{module}.{name}")
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    def persistent_load(self, pid):
        self.refused.append(f"persistent id {pid!r}")
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _plain_pickle_callables(path: Path) -> list[str]:
    """Load ``path`` pickle after pickle with ``_ListedOnly`` (a legacy torch.save file is several pickles); a
    file that stops being a pickle stops there, having called nothing unlisted on the way."""
    with open(path, "rb") as f:
        size = path.stat().st_size
        while f.tell() < size:
            reader = _ListedOnly(f)
            try:
                reader.load()
            except Exception:
                return reader.refused
            if reader.refused:
                return reader.refused
    return []

"""Resuming never runs code from the checkpoint folder: a planted pickle is refused before anything loads it, and
the checkpoints train() writes pass (the resume tests of test_train.py run the same check for ddp, ZeRO and FSDP)."""

import contextlib
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from llava_nb.data.synthetic import generate
from llava_nb.training.api import train
from llava_nb.training.safe_resume import UnsafeCheckpointError, check_resume_folder, unlisted_callables


class Payload:
    """What an attacker ships: loading it calls ``os.mkdir(marker)`` (any callable would do, os.system too)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


#: the three pickles before the data in torch.save's legacy (pre-zip) format, which torch.load still reads
LEGACY_HEADER = b"".join(pickle.dumps(x) for x in (
    torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION,
    {"protocol_version": torch.serialization.PROTOCOL_VERSION, "little_endian": True,
     "type_sizes": {"short": 2, "int": 4, "long": 4}}))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    data = generate(tmp / "data", n_images=16, n_test=4, seed=1)
    common = dict(data=data["captions"], image_folder=data["image_folder"], batch_size=8, num_processes=1,
                  log_every=0, save_every=2)
    train("tiny-llava-1.5", 1, output_dir=tmp / "run", stop_after=2, **common)
    return tmp / "run" / "checkpoints" / "step_2", common


def test_a_checkpoint_train_wrote_passes(checkpoint):
    folder, _ = checkpoint
    assert {p.name for p in folder.iterdir()} >= {"optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"}
    check_resume_folder(folder)


@pytest.mark.parametrize("name, write", [
    ("custom_checkpoint_1.pkl", lambda path, obj: torch.save({"step": 2, "x": obj}, path)),  # torch.save (zip)
    ("random_states_0.pkl", lambda path, obj: path.write_bytes(pickle.dumps(obj, protocol=0))),  # plain, protocol 0
    ("optimizer.bin", lambda path, obj: path.write_bytes(LEGACY_HEADER + pickle.dumps(obj))),  # legacy: 4 pickles
])
def test_a_planted_pickle_is_refused_before_it_runs(checkpoint, tmp_path, name, write):
    folder, common = checkpoint
    planted = tmp_path / "shared"
    shutil.copytree(folder, planted)
    marker = tmp_path / "pwned"
    write(planted / name, Payload(marker))
    assert "mkdir" in " ".join(unlisted_callables(planted / name)) and not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match=rf"{name} would call .*mkdir"):
        train("tiny-llava-1.5", 1, output_dir=tmp_path / "out", resume_from=str(planted), **common)
    assert not marker.exists()
    with contextlib.suppress(Exception):  # what Accelerate's load_state does with the file
        torch.load(planted / name, weights_only=False)
    assert marker.exists()  # the check is what stood in the way


def test_dcp_metadata_is_read_with_only_its_own_classes(tmp_path):
    """DCP reads ``.metadata`` with plain ``pickle.load``: its own records pass, anything else is refused."""
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata, TensorProperties

    good = tmp_path / "good.metadata"
    good.write_bytes(pickle.dumps(Metadata({"w": TensorStorageMetadata(TensorProperties(torch.bfloat16),
                                                                         torch.Size([2, 2]), [])})))
    assert unlisted_callables(good) == []
    bad = tmp_path / "bad.metadata"
    bad.write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
    assert unlisted_callables(bad) == [f"{os.mkdir.__module__}.mkdir"] and not (tmp_path / "pwned").exists()


def test_the_command_line_refuses_in_one_line(checkpoint, tmp_path):
    folder, common = checkpoint
    planted = tmp_path / "shared"
    shutil.copytree(folder, planted)
    torch.save(Payload(tmp_path / "pwned"), planted / "custom_checkpoint_1.pkl")
    done = subprocess.run([sys.executable, "-m", "llava_nb", "train", "--model", "tiny-llava-1.5", "--stage", "1",
                           "--data", str(common["data"]), "--image-folder", str(common["image_folder"]),
                           "--output-dir", str(tmp_path / "out"), "--resume-from", str(planted)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "would call posix.mkdir" in done.stderr
    assert not (tmp_path / "pwned").exists()

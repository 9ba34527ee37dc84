"""LLAVA_NB_CHECKPOINTS: Hub ids read from local folders (make-checkpoint's stand-ins), and a clear line when one
is missing."""

from dataclasses import replace

import pytest

import llava_nb
from llava_nb.models.local import ENV_VAR, CheckpointMissingError, resolve
from llava_nb.models.specs import get_spec, with_text
from llava_nb.models.standin import write_standin

HUB = "llava-hf/llava-1.5-7b-hf"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A folder as LLAVA_NB_CHECKPOINTS holds them, with a tiny stand-in filed under llava-1.5-7b's Hub id."""
    root = tmp_path_factory.mktemp("checkpoints")
    spec = replace(with_text(get_spec("tiny-llava-1.5"), vocab_size=32064), image_token_index=32000,
                   llava_nb_name="standin-test")
    write_standin(spec, root / "llava-hf" / "llava-1.5-7b-hf", device="cpu")
    return root


def test_without_the_variable_hub_ids_stay_hub_ids(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve(HUB) == HUB and resolve("llava-1.5-7b") == "llava-1.5-7b"


def test_names_and_hub_ids_resolve_to_the_local_folder(checkpoints, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(checkpoints))
    folder = str(checkpoints / "llava-hf" / "llava-1.5-7b-hf")
    assert resolve(HUB) == resolve("llava-1.5-7b") == folder
    assert resolve(folder) == folder and resolve("tiny-llava-1.5") == "tiny-llava-1.5"


def test_a_standin_says_so_wherever_it_is_named(checkpoints, monkeypatch, tmp_path):
    """The chapters print no accuracies or answers of random weights: is_standin tells them apart."""
    from llava_nb.models.standin import is_standin

    monkeypatch.setenv(ENV_VAR, str(checkpoints))
    assert is_standin(HUB) and is_standin("llava-1.5-7b") and is_standin(checkpoints / "llava-hf" / "llava-1.5-7b-hf")
    assert not is_standin(tmp_path) and not is_standin("tiny-llava-1.5")


def test_the_full_profile_loads_the_local_checkpoint(checkpoints, monkeypatch):
    from llava_nb.models.profiles import model_and_processor

    monkeypatch.setenv(ENV_VAR, str(checkpoints))
    model, processor = model_and_processor("v1.5", "full")
    assert model.config.text_config.vocab_size == 32064  # the stand-in, not a download
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_index == 32000


def test_a_missing_checkpoint_names_the_variable_and_the_command(checkpoints, monkeypatch, run_cli):
    monkeypatch.setenv(ENV_VAR, str(checkpoints))
    with pytest.raises(CheckpointMissingError) as err:
        resolve("llava-v1.6-mistral-7b")
    message = str(err.value)
    assert "\n" not in message and ENV_VAR in message
    assert f"make-checkpoint --like llava-v1.6-mistral-7b --out {checkpoints}/llava-hf/llava-v1.6-mistral-7b-hf" in message
    with pytest.raises(CheckpointMissingError, match="copy the checkpoint's files"):
        resolve("someone/unknown-llava")
    # train() resolves first: the line comes before any data, plan or weights
    rc, _, line = run_cli(["train", "--model", "llava-hf/llava-v1.6-mistral-7b-hf", "--stage", "2",
                           "--data", "missing.json"])
    assert rc != 0 and line.startswith("error:") and ENV_VAR in line and "make-checkpoint" in line


def test_make_checkpoint_files_into_the_variable_or_asks_for_out(checkpoints, monkeypatch, run_cli):
    monkeypatch.delenv(ENV_VAR, raising=False)
    rc, _, line = run_cli(["make-checkpoint", "--like", "llava-1.5-7b"])
    assert rc != 0 and "--out" in line and ENV_VAR in line
    monkeypatch.setenv(ENV_VAR, str(checkpoints))
    rc, _, line = run_cli(["make-checkpoint", "--like", "llava-1.5-7b"])  # the folder is there: refused, untouched
    assert rc != 0 and "not empty" in line and str(checkpoints / "llava-hf" / "llava-1.5-7b-hf") in line
    assert llava_nb.load_model("llava-1.5-7b").config.text_config.vocab_size == 32064


def test_load_for_training_reads_the_local_checkpoint(checkpoints, monkeypatch):
    """The your-data chapter loads its released checkpoint by Hub id (llava-hf/llava-1.5-7b-hf): that too is read
    from the variable's folder, tokenizer and image processor included (on the GPU it went to the Hub first)."""
    from llava_nb.training.loading import load_for_training

    monkeypatch.setenv(ENV_VAR, str(checkpoints))
    model, tokenizer, _ = load_for_training(HUB, stage=2)
    assert model.config.text_config.vocab_size == 32064 and tokenizer.convert_tokens_to_ids("<image>") == 32000

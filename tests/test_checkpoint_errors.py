"""Bad checkpoints and over-long samples stop train() in the launching process, before any worker starts or any
weight loads, with one line that names the file or value and the fix. Each case breaks a copy of a tiny stand-in
checkpoint (written as make-checkpoint writes the full-size ones; tests/test_standin.py)."""

import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import pytest

import llava_nb
import llava_nb.training.api as api
from llava_nb.data.dataset import ConversationDataset
from llava_nb.data.lengths import SampleTooLongError, check_lengths, sample_lengths, text_lengths
from llava_nb.data.records import load_conversations
from llava_nb.data.synthetic import generate
from llava_nb.models.checkpoint_check import (CheckpointError, ImageSizeMismatchError, MissingCheckpointFileError,
                                              MissingImageTokenError, check_checkpoint)
from llava_nb.models.image_tokens import count_image_tokens, max_image_tokens
from llava_nb.models.specs import get_spec, with_text
from llava_nb.models.standin import write_standin
from llava_nb.models.templates import tokenize_conversation
from llava_nb.training.config import TrainConfig
from llava_nb.training.loading import _model_config, load_for_training, load_processing, load_text_tokenizer
from llava_nb.training.preflight import check_data, check_model

FAST = dict(num_processes=1, batch_size=8, log_every=0, max_steps=1)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """Tiny v1.5 and v1.6 stand-ins: the real vocabulary and <image> id (32000), as make-checkpoint writes them."""
    root = tmp_path_factory.mktemp("standins")
    out = {}
    for version, name in (("v1.5", "tiny-llava-1.5"), ("v1.6", "tiny-llava-v1.6")):
        spec = replace(with_text(get_spec(name), vocab_size=32064), image_token_index=32000, llava_nb_name="standin")
        out[version] = write_standin(spec, root / version, device="cpu")
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"square": generate(root / "square", n_images=24, n_test=4, seed=1),
            "anyres": generate(root / "anyres", n_images=24, n_test=4, seed=1, sizes="anyres")}


@pytest.fixture()
def no_workers(monkeypatch):
    """Fail the test if train() starts a worker, loads weights or trains the tiny pretrained parts."""
    def spawned(*args, **kwargs):
        raise AssertionError("a worker was started or weights were loaded")

    monkeypatch.setattr(api, "launch", spawned)
    monkeypatch.setattr(llava_nb.models.architectures, "load_model", spawned)
    monkeypatch.setattr(llava_nb.training.pretrain, "ensure_pretrained_parts", spawned)


def broken_copy(folder, tmp_path):
    """A copy of a checkpoint folder to break (the weights linked, not copied: no check reads them)."""
    copy = tmp_path / f"broken-{folder.name}"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    for weights in folder.glob("*.safetensors"):
        (copy / weights.name).symlink_to(weights)
    return copy


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1))


def no_processor(f):
    (f / "processor_config.json").unlink()


def no_config(f):
    (f / "config.json").unlink()


def no_image_token(f):  # a text-only tokenizer: "<image>" neither an added token nor in the vocabulary
    def rename(data):
        data["model"]["vocab"]["<img>"] = data["model"]["vocab"].pop("<image>")
        for token in data["added_tokens"]:
            if token["content"] == "<image>":
                token["content"] = "<img>"

    edit_json(f / "tokenizer.json", rename)


def other_image_id(f):
    edit_json(f / "config.json", lambda d: d.update(image_token_index=31999))


def processor_at_224(f):  # a processor saved with the class defaults: 224 px for an 84-px tower
    edit_json(f / "processor_config.json", lambda d: d["image_processor"].update(
        crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224}))


def old_style_without_crop(f):  # the image processor in preprocessor_config.json, crop_size left to the default
    processor = json.loads((f / "processor_config.json").read_text())
    settings = processor.pop("image_processor")
    settings.pop("crop_size")
    (f / "preprocessor_config.json").write_text(json.dumps(settings))
    (f / "processor_config.json").write_text(json.dumps(processor))


def other_pinpoints(f):
    edit_json(f / "processor_config.json", lambda d: d["image_processor"].update(image_grid_pinpoints=[[84, 168]]))


def uneven_pinpoints(f):
    for name, key in (("config.json", None), ("processor_config.json", "image_processor")):
        edit_json(f / name, lambda d: (d[key] if key else d).update(image_grid_pinpoints=[[84, 168], [126, 84]]))


def tiles_of_another_size(f):  # no centre crop: the output is `size`, but LLaVA-NeXT still cuts crop_size tiles
    edit_json(f / "processor_config.json", lambda d: d["image_processor"].update(
        do_center_crop=False, crop_size={"height": 168, "width": 168}))


CASES = [  # (version, break, error, what the message names)
    ("v1.5", no_processor, MissingCheckpointFileError,
     ["preprocessor_config.json", "processor_config.json", "AutoProcessor.from_pretrained", "llava-1.5-7b-hf"]),
    ("v1.5", no_config, MissingCheckpointFileError, ["config.json"]),
    ("v1.5", no_image_token, MissingImageTokenError, ["<image>", "tokenizer.json", "32000", "add_special_tokens"]),
    ("v1.5", other_image_id, MissingImageTokenError, ["<image>", "tokenizer.json", "32000", "31999", "config.json"]),
    ("v1.5", processor_at_224, ImageSizeMismatchError,
     ["vision_config.image_size 84", "224x224", "config.json", "processor_config.json"]),
    ("v1.5", old_style_without_crop, ImageSizeMismatchError, ["84", "224x224", "preprocessor_config.json"]),
    ("v1.6", processor_at_224, ImageSizeMismatchError, ["84", "224x224", "llava-v1.6-vicuna-7b-hf"]),
    ("v1.6", other_pinpoints, ImageSizeMismatchError, ["[[84, 168]]", "[[84, 168], [168, 84]", "config.json"]),
    ("v1.6", uneven_pinpoints, ImageSizeMismatchError, ["[[126, 84]]", "84-px tiles", "config.json"]),
    ("v1.6", tiles_of_another_size, ImageSizeMismatchError, ["168 px", "crop_size", "image_size 84"]),
]


@pytest.mark.parametrize("version, damage, error, named", CASES, ids=[c[1].__name__ + "-" + c[0] for c in CASES])
def test_a_broken_checkpoint_stops_train_before_any_worker(standins, data, tmp_path, no_workers, version, damage,
                                                          error, named):
    folder = broken_copy(standins[version], tmp_path)
    damage(folder)
    sizes = "anyres" if version == "v1.6" else "square"
    with pytest.raises(error) as caught:
        api.train(folder, 2, data=data[sizes]["instruct"], image_folder=data[sizes]["image_folder"],
                  output_dir=tmp_path / "run", **FAST)
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, llava_nb.LlavaNbError)
    assert str(folder) in message, message
    for text in named:
        assert text in message, (text, message)
    assert not (tmp_path / "run").exists()


def test_transformers_would_fail_later_on_what_the_size_check_refuses(standins, tmp_path):
    """The reference: transformers' own processor, loaded from the broken folder, makes 224-px images for the
    84-px tower, and the model's embedding refuses them (what the check saves a run from)."""
    import torch

    folder = broken_copy(standins["v1.5"], tmp_path)
    processor_at_224(folder)
    pixels = llava_nb.load_processor(folder).image_processor(llava_nb.sample_image("coffee"),
                                                             return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == (224, 224)
    model = llava_nb.load_model(standins["v1.5"])
    with pytest.raises(ValueError, match="doesn't match model"), torch.no_grad():
        model.model.vision_tower(pixels.to(model.dtype))


def test_the_worker_loader_checks_before_loading_weights(standins, tmp_path, no_workers):
    folder = broken_copy(standins["v1.5"], tmp_path)
    no_image_token(folder)
    with pytest.raises(MissingImageTokenError):
        load_for_training(str(folder), 2)


def test_good_checkpoints_pass_and_reach_the_launch(standins, data, tmp_path, monkeypatch):
    class Launched(Exception):
        pass

    def launch(spec, processes):
        raise Launched(spec.model)

    monkeypatch.setattr(api, "launch", launch)
    for version, sizes in (("v1.5", "square"), ("v1.6", "anyres")):
        assert check_checkpoint(standins[version]).image_token_id == 32000
        with pytest.raises(Launched):
            api.train(standins[version], 2, data=data[sizes]["instruct"], image_folder=data[sizes]["image_folder"],
                      eval_data=data[sizes]["test"], output_dir=tmp_path / version, **FAST)


def test_a_tiny_models_folder_without_processor_uses_the_tiny_tokenizer(tmp_path):
    """A tiny model saved with save_pretrained alone (as the QLoRA chapter does) is paired with the committed tiny
    tokenizer, as it was built; any other folder without a processor is refused."""
    llava_nb.build_model("tiny-llava-1.5").save_pretrained(tmp_path / "tiny")
    assert check_checkpoint(tmp_path / "tiny").processor_file is None
    assert len(load_text_tokenizer(str(tmp_path / "tiny"))) == len(llava_nb.load_tokenizer())
    edit_json(tmp_path / "tiny" / "config.json", lambda d: d.pop("llava_nb_name"))
    with pytest.raises(MissingCheckpointFileError, match="has no processor"):
        check_checkpoint(tmp_path / "tiny")


def test_the_checks_take_well_under_half_a_second(standins, data):
    """check_model + check_data on a tiny checkpoint, its training data and held-out questions, once warm (the
    imports are the workers' too); the checkpoint check alone takes milliseconds."""
    folder, syn = str(standins["v1.5"]), data["square"]
    cfg = TrainConfig.recipe(False, 2)

    def checks():
        start = time.perf_counter()
        check_model(folder)
        check_data(folder, 2, cfg, syn["instruct"], syn["image_folder"], syn["test"])
        return time.perf_counter() - start

    checks()
    assert min(checks() for _ in range(3)) < 0.25
    start = time.perf_counter()
    check_checkpoint(folder)
    assert time.perf_counter() - start < 0.1


def long_records(syn, tmp_path, extra_words: int):
    """The synthetic set with one record (#3) made longer by ``extra_words`` words in its answer."""
    records = json.loads(syn["instruct"].read_text())
    records[3]["conversations"][1]["value"] += " very" * extra_words
    path = tmp_path / "long.json"
    path.write_text(json.dumps(records))
    return path, records[3]["id"]


def dataset_length(model, template, records, i) -> int:
    """What the workers' ConversationDataset builds for record ``i``, untruncated (the reference)."""
    tokenizer, image_processor = load_processing(model)
    return len(ConversationDataset(records[i:i + 1], tokenizer, _model_config(model), template,
                                   image_processor=image_processor).items[0].input_ids)


def test_an_over_long_sample_names_its_record_count_and_fix(standins, data, tmp_path, no_workers):
    folder, syn = standins["v1.5"], data["square"]
    path, rid = long_records(syn, tmp_path, 300)
    records = load_conversations(path, syn["image_folder"])
    needed = dataset_length(str(folder), "vicuna_v1", records, 3)
    assert needed > 300
    with pytest.raises(SampleTooLongError) as caught:
        api.train(folder, 2, data=path, image_folder=syn["image_folder"], output_dir=tmp_path / "run",
                  max_length=needed - 1, **FAST)
    message = str(caught.value)
    assert "\n" not in message and not (tmp_path / "run").exists()
    for text in (str(path), "record #3", repr(rid), f"{needed} tokens", f"max_length={needed - 1}",
                 f"--set max_length={needed}", "shorten or drop"):
        assert text in message, (text, message)
    assert isinstance(caught.value, llava_nb.DataError)
    tokenizer = load_text_tokenizer(str(folder))
    check_lengths(tokenizer, _model_config(str(folder)), records, "vicuna_v1", needed)  # exactly fits: passes


def test_an_over_long_held_out_question_is_refused_too(data, tmp_path, no_workers):
    syn = data["square"]
    records = json.loads(syn["test"].read_text())
    records[1]["conversations"][0]["value"] += " please" * 600
    path = tmp_path / "test.json"
    path.write_text(json.dumps(records))
    with pytest.raises(SampleTooLongError, match=r"test\.json record #1"):
        check_data("tiny-llava-1.5", 2, TrainConfig.recipe(True, 2), syn["instruct"], syn["image_folder"], path)


@pytest.mark.parametrize("template", ["plain", "vicuna_v1", "mistral_instruct", "chat_template"])
def test_the_preflight_counts_what_the_dataset_builds(standins, data, template):
    """text + image tokens per record equal the lengths of the workers' ConversationDataset (untruncated), with the
    tokenizer the parent loads (AutoTokenizer) and the one the workers get (AutoProcessor), on v1.5 and v1.6."""
    for version, sizes in (("v1.5", "square"), ("v1.6", "anyres")):
        model, syn = str(standins[version]), data[sizes]
        records = load_conversations(syn["instruct"], syn["image_folder"])
        worker_tokenizer, image_processor = load_processing(model)
        config = _model_config(model)
        expected = [len(item.input_ids) for item in
                    ConversationDataset(records, worker_tokenizer, config, template, None, image_processor).items]
        assert [n + m for n, m in sample_lengths(load_text_tokenizer(model), config, records, template)] == expected
    tiny = llava_nb.load_tokenizer()
    records = load_conversations(data["square"]["captions"], data["square"]["image_folder"])
    assert text_lengths(tiny, records, template) == [
        len(tokenize_conversation(tiny, r["conversations"], template, 0 if r["image"] is None else 1).input_ids)
        - (r["image"] is not None) for r in records]


@pytest.mark.parametrize("name", ["llava-v1.6-mistral-7b", "tiny-llava-v1.6", "llava-1.5-7b"])
def test_max_image_tokens_is_the_most_any_image_gives(name):
    sizes = [(h, w) for h in range(30, 1500, 53) for w in range(30, 1500, 61)]
    assert max_image_tokens(name) == max(count_image_tokens(name, h, w) for h, w in sizes)


def test_the_command_line_prints_one_line_and_starts_nothing(standins, data, tmp_path):
    folder = broken_copy(standins["v1.5"], tmp_path)
    no_processor(folder)
    syn = data["square"]
    out = subprocess.run([sys.executable, "-m", "llava_nb", "train", "--model", str(folder), "--stage", "2",
                          "--data", str(syn["instruct"]), "--image-folder", str(syn["image_folder"]),
                          "--output-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: {folder} has no processor")
    assert not (tmp_path / "run").exists()


def test_the_errors_are_llava_nb_errors():
    for error in (MissingCheckpointFileError, MissingImageTokenError, ImageSizeMismatchError):
        assert issubclass(error, CheckpointError) and issubclass(error, llava_nb.LlavaNbError)
    assert issubclass(SampleTooLongError, llava_nb.DataError)

import hashlib
import json
import warnings

import pytest
import torch
from PIL import Image

import llava_nb
from llava_nb.data.records import DataError, load_conversations
from llava_nb.data.dataset import Collator, ConversationDataset
from llava_nb.data.synthetic import generate
from llava_nb.models.templates import IGNORE_INDEX, tokenize_conversation


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "images" / "coco" / "train2017").mkdir(parents=True)
    Image.new("RGB", (120, 80), (200, 10, 10)).save(tmp_path / "images" / "coco" / "train2017" / "a.jpg")
    Image.new("RGB", (50, 90), (10, 200, 10)).save(tmp_path / "images" / "b.png")
    return tmp_path


def _write(folder, records):
    path = folder / "data.json"
    path.write_text(json.dumps(records))
    return path


GOOD = [
    # LCS-558K style: <image> at the end of the first human turn, nested folder
    {"id": "GCC_train_000", "image": "coco/train2017/a.jpg",
     "conversations": [{"from": "human", "value": "Give a brief description of the image.\n<image>"},
                       {"from": "gpt", "value": "a red square"}]},
    # llava_v1_5_mix665k text-only record: no image key, no <image>
    {"id": "sharegpt_1", "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi!"}]},
    # multi-turn, <image> at the start
    {"id": "000000033471", "image": "b.png",
     "conversations": [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "Green."},
                       {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
]


def test_reads_real_formats(folder):
    records = load_conversations(_write(folder, GOOD), folder / "images")
    assert [r["id"] for r in records] == ["GCC_train_000", "sharegpt_1", "000000033471"]
    assert records[0]["image"].endswith("coco/train2017/a.jpg")
    assert records[1]["image"] is None


@pytest.mark.parametrize("record,problem", [
    ({"id": "x1", "image": "missing.jpg", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                            {"from": "gpt", "value": "A"}]}, "missing image file"),
    ({"id": "x2", "image": "b.png", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
     "no <image>"),
    ({"id": "x3", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
     "no 'image' key"),
    ({"id": "x4", "conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]}, "unknown role"),
    ({"id": "x5", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "  "}]}, "empty answer"),
    ({"id": "x6", "conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]}, "alternate"),
    # a record cannot reach files outside image_folder, by an absolute path or by climbing out of it
    ({"id": "x7", "image": "/etc/passwd", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                             {"from": "gpt", "value": "A"}]}, "outside image_folder"),
    ({"id": "x8", "image": "../data.json", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                              {"from": "gpt", "value": "A"}]}, "outside image_folder"),
])
def test_bad_records_name_id_and_problem(folder, record, problem):
    with pytest.raises(DataError) as err:
        load_conversations(_write(folder, [GOOD[1], record]), folder / "images")
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith(record["id"] + ": ")
    assert problem in str(err.value)


def test_images_outside_the_folder_only_when_allowed(folder):
    """``images_outside=True`` (``--images-outside-folder``) lets a record name an image anywhere."""
    image = folder / "images" / "coco" / "train2017" / "a.jpg"
    records = [{"id": "abs", "image": str(image), "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                                    {"from": "gpt", "value": "A"}]},
               {"id": "up", "image": "../images/coco/train2017/a.jpg", "conversations": [
                   {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}]
    path = _write(folder, records)
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    with pytest.raises(DataError, match="abs: has an image path outside image_folder.*--images-outside-folder"):
        load_conversations(path, elsewhere)
    loaded = load_conversations(path, elsewhere, images_outside=True)
    assert [r["image"] for r in loaded] == [str(image)] * 2


def test_skip_bad_counts_in_a_warning(folder):
    bad = [{"id": f"m{i}", "image": "nope.jpg", "conversations": [{"from": "human", "value": "<image>"},
                                                                  {"from": "gpt", "value": "A"}]} for i in range(3)]
    with pytest.warns(UserWarning, match=r"skipped 3 of 6 records.*3 x missing image file"):
        records = load_conversations(_write(folder, GOOD + bad), folder / "images", skip_bad=True)
    assert len(records) == 3


def _masked(tok, ids, labels):
    """Render a sample: supervised tokens between « and »."""
    out = []
    for i, l in zip(ids, labels):
        text = tok.decode([i])
        out.append(f"«{text}»" if l != IGNORE_INDEX else text)
    return "".join(out).replace("»«", "")


def test_label_mask_of_a_multi_turn_sample():
    tok = llava_nb.load_tokenizer()
    turns = GOOD[2]["conversations"]
    t = tokenize_conversation(tok, turns, "vicuna_v1", n_image_tokens=2)
    rendered = _masked(tok, t.input_ids, t.labels)
    assert rendered.endswith("USER: <image><image>\nWhat color? ASSISTANT:« Green.</s>»USER: Sure? ASSISTANT:« Yes.</s>»")
    assert rendered.startswith("<s>A chat between")
    t = tokenize_conversation(tok, turns, "mistral_instruct", n_image_tokens=2)
    assert _masked(tok, t.input_ids, t.labels) == (
        "<s>[INST] <image><image>\nWhat color? [/INST]« Green. </s>»[INST] Sure? [/INST]« Yes. </s>»")
    t = tokenize_conversation(tok, GOOD[0]["conversations"], "plain", n_image_tokens=2)
    assert _masked(tok, t.input_ids, t.labels) == "<s><image><image>«a red square\n»"


def test_chat_template_equals_vicuna():
    tok = llava_nb.load_tokenizer()
    a = tokenize_conversation(tok, GOOD[2]["conversations"], "vicuna_v1", n_image_tokens=5)
    b = tokenize_conversation(tok, GOOD[2]["conversations"], "chat_template", n_image_tokens=5)
    assert (a.input_ids, a.labels, a.image_span) == (b.input_ids, b.labels, b.image_span)


def test_truncation_never_cuts_image_tokens():
    tok = llava_nb.load_tokenizer()
    turns = GOOD[2]["conversations"]
    with pytest.raises(llava_nb.ImageTokenMismatchError, match="cut through the image tokens"):
        tokenize_conversation(tok, turns, "vicuna_v1", n_image_tokens=576, max_length=400)
    t = tokenize_conversation(tok, turns, "vicuna_v1", n_image_tokens=10, max_length=50)
    assert len(t.input_ids) == 50 and t.truncated > 0 and t.image_span[1] <= 50


def test_unknown_template():
    with pytest.raises(llava_nb.LlavaNbError, match="vicuna_v1"):
        tokenize_conversation(llava_nb.load_tokenizer(), GOOD[1]["conversations"], "llama3")


def test_dataset_and_collator(folder):
    records = load_conversations(_write(folder, GOOD), folder / "images")
    tok = llava_nb.load_tokenizer()
    for name in ["tiny-llava-1.5", "tiny-llava-v1.6"]:
        ds = ConversationDataset(records, tok, name, "vicuna_v1")
        right = Collator(tok.pad_token_id, "right")([ds[i] for i in range(3)])
        left = Collator(tok.pad_token_id, "left")([ds[i] for i in range(3)])
        assert right["pixel_values"].shape[0] == 2  # the text-only record has no image
        assert (right["input_ids"][:, 0] == tok.bos_token_id).all()  # right padding: starts aligned
        assert (left["attention_mask"][:, -1] == 1).all()  # left padding: ends aligned
        assert (right["labels"][right["attention_mask"] == 0] == IGNORE_INDEX).all()
        if name.endswith("v1.6"):
            assert right["image_sizes"].tolist() == [[80, 120], [90, 50]]
            assert right["pixel_values"].dim() == 5
        model = llava_nb.build_model(name)
        assert torch.isfinite(model(**right).loss)


def test_dataset_warns_about_truncated_text(folder):
    records = load_conversations(_write(folder, GOOD), folder / "images")
    with pytest.warns(UserWarning, match="longer than max_length"):
        ConversationDataset(records, llava_nb.load_tokenizer(), "tiny-llava-v1", "vicuna_v1", max_length=64)


def test_synthetic_generator_is_deterministic(tmp_path):
    a = generate(tmp_path / "a", n_images=30, n_test=10, seed=3, sizes="anyres")
    b = generate(tmp_path / "b", n_images=30, n_test=10, seed=3, sizes="anyres")
    digest = lambda folder: hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*.png")))).hexdigest()
    assert digest(a["image_folder"]) == digest(b["image_folder"])
    for key in ("captions", "instruct", "test"):
        assert a[key].read_text() == b[key].read_text()
    records = load_conversations(a["instruct"], a["image_folder"])
    assert len(records) == 30 and any(len(r["conversations"]) > 2 for r in records)
    test = load_conversations(a["test"], a["image_folder"])
    assert {r["question_type"] for r in test} == {"colour", "shape", "count", "position", "exists"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_conversations(a["captions"], a["image_folder"])


def test_length_grouped_sampler_is_a_deterministic_permutation_with_less_padding():
    import random

    from llava_nb.data.dataset import LengthGroupedSampler

    rng = random.Random(0)
    lengths = [rng.randint(50, 150) for _ in range(1000)]
    s = LengthGroupedSampler(lengths, group=8, seed=3, mega=10)
    first = list(s)
    assert sorted(first) == list(range(1000)) and first == list(s)  # a permutation, the same twice
    s.set_epoch(1)
    assert list(s) != first  # a new order each epoch

    def padding(order):  # padded tokens / real tokens for batches of 8
        return sum(max(lengths[i] for i in order[k:k + 8]) * 8 for k in range(0, 1000, 8)) / sum(lengths)

    shuffled = list(range(1000))
    random.Random(1).shuffle(shuffled)
    assert padding(first) < 1.05 < padding(shuffled)


def test_synthetic_turns_and_distinct_question_types(tmp_path):
    files = generate(tmp_path, n_images=20, n_test=5, seed=1, turns=(5,), distinct_types=True)
    for rec in json.loads(files["instruct"].read_text()):
        questions = [t["value"] for t in rec["conversations"][::2]]
        assert len(questions) == 5
        kinds = {"color" if "color" in q else "shape is" if "What shape" in q else "many" if "How many" in q
                 else "at the" if " at the " in q else "exists" for q in questions}
        assert len(kinds) == 5, questions  # every question type once


def test_synthetic_describe_turns_and_type_weights(tmp_path):
    from llava_nb.data.synthetic import DESCRIBE_PROMPTS

    plain = generate(tmp_path / "plain", n_images=40, n_test=10, seed=2)
    files = generate(tmp_path / "d", n_images=40, n_test=10, seed=2, describe=1.0, type_weights={"exists": 1e9})
    records = json.loads(files["instruct"].read_text())
    for rec in records:
        first, answer = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
        assert first.replace("<image>", "").strip() in DESCRIBE_PROMPTS and "<image>" in first
        assert answer == next(c for c in json.loads(files["captions"].read_text())
                              if c["image"] == rec["image"])["conversations"][1]["value"]  # the image's caption
        assert all(t["value"].startswith("Is there a") and "<image>" not in t["value"]
                   for t in rec["conversations"][2::2])  # only "exists" questions, the image once
    assert files["test"].read_text() == plain["test"].read_text()  # the test split does not change

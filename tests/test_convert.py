"""The converter from ShareGPT and messages (TRL/OpenAI) records to LLaVA's, checked against LLaVA's own
preprocessing, the project's loader and the processor's image-token expansion."""

import copy
import json
import subprocess
import sys

import pytest
from PIL import Image

from llava_nb.cli import main
from llava_nb.data.convert import convert_file, convert_record, convert_records, to_messages
from llava_nb.data.records import DataError, load_conversations
from llava_nb.paths import REPO_ROOT

# LLaVA's own records (docs/Finetune_Custom_Data.md, llava_v1_5_mix665k, LCS-558K): a fixed point of the converter
LLAVA = [
    {"id": "997bb945", "image": "part-000001/997bb945.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWrite a prompt for Stable Diffusion to generate this image."},
        {"from": "gpt", "value": "a beautiful painting"}]},
    {"id": "GCC_train_000", "image": "a.png", "conversations": [
        {"from": "human", "value": "Give a brief description of the image.\n<image>"},
        {"from": "gpt", "value": "a red square"}]},
    {"id": "sharegpt_1", "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi!"}]},
    {"id": "000000033471", "image": "b.png", "question_type": "colour", "conversations": [
        {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "Green."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
]

# TRL/OpenAI messages, hand-written, with the LLaVA records they must become
MESSAGES = [
    ({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape?"}]},
                   {"role": "assistant", "content": [{"type": "text", "text": "A circle."}]}], "images": ["a.png"]},
     {"id": "0", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat shape?"},
                                                     {"from": "gpt", "value": "A circle."}]}),
    ({"id": "q2", "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe."},
                                                            {"type": "image", "path": "sub/b.png"}]},
                               {"role": "assistant", "content": "Two squares."}]},
     {"id": "q2", "image": "sub/b.png", "conversations": [{"from": "human", "value": "Describe.\n<image>"},
                                                          {"from": "gpt", "value": "Two squares."}]}),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "c.jpg"}},
                                                {"type": "text", "text": "Colour?"}]},
                   {"role": "assistant", "content": "red"}, {"role": "user", "content": "Sure?"},
                   {"role": "assistant", "content": "yes"}], "topic": "shapes"},
     {"id": "2", "image": "c.jpg", "topic": "shapes", "conversations": [
         {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"},
         {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}]}),
    ({"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]},  # text only
     {"id": "3", "conversations": [{"from": "human", "value": "2 + 2?"}, {"from": "gpt", "value": "4"}]}),
    ({"messages": [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A cat."}],
      "images": [{"bytes": None, "path": "cat.png"}]},  # an image with no placeholder: where LLaVA would move it
     {"id": "4", "image": "cat.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                       {"from": "gpt", "value": "A cat."}]}),
]

# ShareGPT variants: other role names, an "images" list of one, an image without placeholder
SHAREGPT = [
    ({"conversations": [{"from": "user", "value": "<image>Shape?"}, {"from": "assistant", "value": "cross"}],
      "images": ["x.png"]},
     {"id": "0", "image": "x.png", "conversations": [{"from": "human", "value": "<image>Shape?"},
                                                     {"from": "gpt", "value": "cross"}]}),
    ({"id": "t", "conversations": [{"from": "human", "value": "Count?"}, {"from": "gpt", "value": "three"}],
      "image": "y.png"},
     {"id": "t", "image": "y.png", "conversations": [{"from": "human", "value": "<image>\nCount?"},
                                                     {"from": "gpt", "value": "three"}]}),
]


def preprocess_multimodal(sources):
    """haotian-liu/LLaVA@c121f04 llava/train/train.py:316-327 (mm_use_im_start_end False, no mmtag), copied."""
    for source in sources:
        for sentence in source:
            if "<image>" in sentence["value"]:
                sentence["value"] = sentence["value"].replace("<image>", "").strip()
                sentence["value"] = "<image>" + "\n" + sentence["value"]
                sentence["value"] = sentence["value"].strip()
    return sources


def llava_roles_ok(source):
    """haotian-liu/LLaVA@c121f04 llava/train/train.py:420-432: roles by "from", asserted to alternate."""
    roles = {"human": "USER", "gpt": "ASSISTANT"}
    return all(roles[s["from"]] == ("USER", "ASSISTANT")[j % 2] for j, s in enumerate(source))


def test_llava_records_are_a_fixed_point():
    assert convert_records(copy.deepcopy(LLAVA)) == LLAVA


def test_messages_round_trip():
    there = [to_messages(r) for r in LLAVA]
    assert all("messages" in m and "conversations" not in m for m in there)
    assert convert_records(there) == LLAVA


@pytest.mark.parametrize("index,record,expected", [(i, *pair) for samples in (MESSAGES, SHAREGPT)
                                                    for i, pair in enumerate(samples)])
def test_hand_written_samples(index, record, expected):
    assert convert_record(copy.deepcopy(record), index) == expected


def test_mixed_file_and_llava_preprocessing(tmp_path):
    """A file mixing both formats, text-only records included; LLaVA's own preprocessing accepts every record and
    finds the image in the first human turn."""
    records = [r for r, _ in MESSAGES] + [r for r, _ in SHAREGPT] + [to_messages(LLAVA[2])]
    converted = convert_records(records)
    assert [("image" in r) for r in converted] == [True, True, True, False, True, True, True, False]
    for rec in converted:
        assert llava_roles_ok(rec["conversations"])
        moved = preprocess_multimodal([copy.deepcopy(rec["conversations"])])[0]
        if "image" in rec:
            assert moved[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in moved) == 1
        else:
            assert moved == rec["conversations"]


def test_system_messages():
    record = {"messages": [{"role": "system", "content": "Answer in one word."},
                           {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shape?"}]},
                           {"role": "assistant", "content": "circle"}], "images": ["a.png"]}
    with pytest.raises(DataError, match=r"^record #7: has a system message.*system='fold'"):
        convert_record(record, 7)
    folded = convert_record(record, 7, system="fold")
    assert folded["conversations"][0]["value"] == "<image>\nAnswer in one word.\nShape?"
    sharegpt = {"system": "Be brief.",
                "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hi"}]}
    assert convert_record(sharegpt, 0, system="fold")["conversations"][0]["value"] == "Be brief.\nHi"
    late = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "system", "value": "x"},
                              {"from": "gpt", "value": "Hi"}]}
    with pytest.raises(DataError, match="system message after the conversation started"):
        convert_record(late, 0, system="fold")


def _msg(*turns, images=None):
    record = {"messages": [{"role": r, "content": c} for r, c in turns]}
    if images is not None:
        record["images"] = images
    return record


IMG = {"type": "image"}


@pytest.mark.parametrize("record,problem", [
    (_msg(("user", [IMG, IMG, {"type": "text", "text": "Same?"}]), ("assistant", "yes"), images=["a", "b"]),
     "has 2 images; LLaVA-1.5 records hold one"),
    (_msg(("user", "Same?"), ("assistant", "yes"), images=["a", "b"]), "has 2 images"),
    (_msg(("user", "Q"), ("user", "Q2"), ("assistant", "A")), "turn 1 is from the user, but roles must alternate"),
    (_msg(("assistant", "A"), ("user", "Q")), "turn 0 is from the assistant"),
    (_msg(("user", "Q"), ("assistant", "A"), ("user", [IMG]), ("assistant", "B"), images=["a"]),
     "has its image in turn 2, not the first user turn"),
    (_msg(("user", [IMG]), ("assistant", "A")), "more image parts than the record has 'images'"),
    (_msg(("user", "Q"), ("assistant", "A"), ("user", "Q2")), "ends with a user turn"),
    (_msg(("user", "Q"), ("assistant", " ")), "empty answer"),
    (_msg(("user", "Q"), ("tool", "A")), "unknown role 'tool'"),
    (_msg(("user", [{"type": "image", "url": "https://x.org/a.png"}]), ("assistant", "A")), "is a URL"),
    (_msg(("user", [{"type": "audio"}]), ("assistant", "A")), "content part"),
    ({"conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
     "placeholder but no image"),
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "image": "a",
      "images": ["a"]}, "both 'image' and 'images'"),
    ({"prompt": "Q", "completion": "A"}, "is in no known format (keys found: ['completion', 'prompt'])"),
    (["not", "a", "record"], "is in no known format (keys found: list)"),
])
def test_errors_name_the_record(record, problem):
    with pytest.raises(DataError) as err:
        convert_records([LLAVA[2], record])
    message = str(err.value)
    assert message.startswith("record #1"), message
    assert problem in message, message
    assert "\n" not in message and "; " in message  # one line: the problem, then the fix


def _images(folder, sizes):
    from llava_nb.data.synthetic import draw_scene, random_scene
    import random

    rng = random.Random(0)
    for k, size in enumerate(sizes):
        (folder / "imgs").mkdir(exist_ok=True)
        draw_scene(random_scene(rng), size, rng).save(folder / "imgs" / f"{k}.png")


def test_cli_convert(tmp_path, capsys):
    _images(tmp_path, [(40, 40)])
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.json"
    src.write_text("\n".join(json.dumps(r) for r in [_msg(("user", [IMG, {"type": "text", "text": "Q"}]),
                                                          ("assistant", "A"), images=["0.png"]),
                                                     _msg(("user", "Hi"), ("assistant", "Hello"))]))
    assert main(["convert", str(src), str(dst), "--image-folder", str(tmp_path / "imgs")]) == 0
    assert "wrote 2 LLaVA records (1 with an image, 1 text-only" in capsys.readouterr().out
    assert len(load_conversations(dst, tmp_path / "imgs")) == 2
    assert main(["convert", str(src), str(dst)]) == 2  # refuses to overwrite
    assert "already exists; choose another output path or pass --force" in capsys.readouterr().err
    assert main(["convert", str(src), str(dst), "--force", "--image-folder", str(tmp_path)]) == 2
    assert "1 image(s) missing under" in capsys.readouterr().err
    assert main(["convert", str(src), str(dst), "--force"]) == 0


def test_cli_convert_imports_no_torch(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps([_msg(("user", "Hi"), ("assistant", "Hello"))]))
    code = ("import sys; from llava_nb.cli import main; "
            f"rc = main(['convert', {str(src)!r}, {str(tmp_path / 'out.json')!r}]); "
            "print(rc, sorted(m for m in ('torch', 'transformers', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-v1.6"])
def test_converted_file_loads_and_image_tokens_match_the_processor(tmp_path, name):
    """Through the project's loader and dataset: every record's image tokens are as many as the model's own
    processor (transformers' LlavaProcessor / LlavaNextProcessor) expands <image> into."""
    import torch

    import llava_nb
    from llava_nb.data.dataset import ConversationDataset

    sizes = [(84, 84), (84, 168), (168, 84), (60, 250)]
    _images(tmp_path, sizes)
    raw = [_msg(("user", [IMG, {"type": "text", "text": f"Shape {k}?"}]), ("assistant", "circle"),
                images=[f"{k}.png"]) for k in range(len(sizes))]
    raw.insert(2, _msg(("user", "Hi"), ("assistant", "Hello")))
    convert_file(_write(tmp_path / "in.json", raw), tmp_path / "llava.json", image_folder=tmp_path / "imgs")
    records = load_conversations(tmp_path / "llava.json", tmp_path / "imgs")
    processor = llava_nb.build_processor(name)
    config = llava_nb.get_config(name)
    template = "mistral_instruct" if config.model_type == "llava_next" else "vicuna_v1"
    dataset = ConversationDataset(records, processor.tokenizer, config, template, max_length=4096)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    for i, rec in enumerate(records):
        ours = int((dataset[i]["input_ids"] == image_id).sum())
        if rec["image"] is None:
            assert ours == 0
            continue
        with Image.open(rec["image"]) as im:
            enc = processor(images=im.convert("RGB"), text="USER: <image>\nQ ASSISTANT:", return_tensors="pt")
        expected = int((enc["input_ids"] == image_id).sum())
        assert ours == expected == llava_nb.count_image_tokens(config, *dataset.sizes[i]) > 0, (name, rec["id"])
        assert torch.equal(dataset[i]["pixel_values"], enc["pixel_values"][0])


def _write(path, records):
    path.write_text(json.dumps(records))
    return path

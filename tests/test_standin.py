"""Stand-in checkpoints: the real architecture and processor layout with random weights, loaded and trained by the
code that loads a real llava-hf checkpoint."""

import json
from dataclasses import replace

import pytest
from PIL import Image

import llava_nb
from llava_nb.models.architectures import get_config
from llava_nb.models.specs import get_spec, with_text
from llava_nb.models.standin import check_standin, standin_processor, write_standin


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-v1.6-mistral-7b"])
def test_the_processor_lays_out_image_tokens_as_the_model_expects(name):
    config = get_config(name)
    processor = standin_processor(config)
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_index == 32000
    assert len(tokenizer) <= config.text_config.vocab_size and tokenizer.pad_token_id == 32001
    ids = processor(text="<image>\nWhat is this?", images=Image.new("RGB", (640, 480)))["input_ids"][0]
    assert sum(i == 32000 for i in ids) == llava_nb.count_image_tokens(name, 480, 640)
    chat = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}])
    assert chat.endswith("[INST] <image>\nhi [/INST]" if "mistral" in name else "USER: <image>\nhi ASSISTANT:")


def test_bad_requests_fail_before_any_weights(tmp_path):
    with pytest.raises(llava_nb.LlavaNbError, match="makes stand-ins for"):
        check_standin("tiny-llava-1.5", tmp_path / "x")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(llava_nb.LlavaNbError, match="not empty"):
        check_standin("llava-1.5-7b", tmp_path / "used")
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"


def test_a_standin_loads_and_trains_like_a_real_checkpoint(tmp_path):
    """A tiny LLaVA with the real vocabulary and <image> id, written as make-checkpoint writes the full-size ones
    (fp16 on disk, no llava_nb keys), trained by train() through from_pretrained and its own processor."""
    from safetensors import safe_open

    from llava_nb.training.api import synthetic_data, train

    spec = replace(with_text(get_spec("tiny-llava-1.5"), vocab_size=32064), image_token_index=32000,
                   llava_nb_name="standin-test")
    folder = write_standin(spec, tmp_path / "standin", device="cpu")
    config = json.loads((folder / "config.json").read_text())
    assert "llava_nb_name" not in config and config["image_token_index"] == 32000
    with safe_open(str(next(folder.glob("*.safetensors"))), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    data = synthetic_data("tiny-llava-1.5", n_images=64, n_test=8)
    run = train(folder, 2, method="lora", data=data["instruct"], image_folder=data["image_folder"], max_steps=2,
                batch_size=8, log_every=0, lora_r=8, output_dir=tmp_path / "run")
    assert run["finished"] and run["template"] == "vicuna_v1" and all(x == x for x in run["losses"])  # no NaN
    assert run["states"]["weights"] == "float32"  # fp16 on disk, trained in fp32 (no NaN from fp16 AdamW)

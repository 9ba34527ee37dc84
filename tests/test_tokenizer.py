import json

import llava_nb
from llava_nb.paths import TOKENIZER_DIR
from llava_nb.data.synthetic import training_corpus
from llava_nb.models.tokenizer import IMAGE_TOKEN, train_tokenizer


def test_image_token_is_one_special_token():
    tok = llava_nb.load_tokenizer()
    ids = tok("USER: <image>\nWhat is this?").input_ids
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == 1
    assert tok.image_token == IMAGE_TOKEN and tok.image_token_id == tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert tok.decode(ids, skip_special_tokens=False).startswith("<s>USER: <image>")


def test_any_text_round_trips():
    tok = llava_nb.load_tokenizer()
    text = "Émile's 東京 photo: 42 purple stars!"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_model_vocab_matches_tokenizer():
    tok = llava_nb.load_tokenizer()
    cfg = llava_nb.get_config("tiny-llava-1.5")
    assert cfg.text_config.vocab_size == len(tok)
    assert cfg.image_token_id == tok.image_token_id


def test_committed_tokenizer_is_reproducible(tmp_path):
    train_tokenizer(training_corpus(), tmp_path)
    fresh = json.loads((tmp_path / "tokenizer.json").read_text())
    committed = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    assert fresh["model"]["vocab"] == committed["model"]["vocab"]
    assert fresh["model"]["merges"] == committed["model"]["merges"]

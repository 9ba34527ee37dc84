import json
import subprocess
import sys

import pytest

import llava_nb
from llava_nb.cli import main
from llava_nb.models.profiles import get_profile, profile_model


def test_profile_default_env_and_flag(monkeypatch):
    monkeypatch.delenv("LLAVA_NB_PROFILE", raising=False)
    assert get_profile() == "tiny"
    monkeypatch.setenv("LLAVA_NB_PROFILE", "full")
    assert get_profile() == "full"
    assert get_profile(["--profile", "tiny"]) == "tiny"
    assert get_profile(["x", "--profile=tiny"]) == "tiny"
    assert profile_model("v1.6") == "llava-v1.6-mistral-7b"
    assert profile_model("v1.6", "tiny") == "tiny-llava-v1.6"


def test_profile_errors(monkeypatch):
    monkeypatch.setenv("LLAVA_NB_PROFILE", "huge")
    with pytest.raises(llava_nb.ProfileError, match="tiny, full"):
        get_profile()
    with pytest.raises(llava_nb.ProfileError):
        get_profile(["--profile"])
    with pytest.raises(llava_nb.ProfileError, match="v1.5"):
        profile_model("v2", "tiny")


def test_params_table(capsys):
    assert main(["params", "--model", "llava-1.5-7b", "--method", "lora"]) == 0
    out = capsys.readouterr().out
    assert "319,815,680" in out and "340,795,392" in out and "7,063,427,072" in out


def test_params_json(capsys):
    assert main(["params", "--model", "llava-hf/llava-1.5-7b-hf", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "llava-1.5-7b" and data["trainable"] == 6_759_919_616


def test_tokens_json_and_table(capsys):
    assert main(["tokens", "--model", "llava-v1.6-mistral-7b", "--size", "480x640", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tokens"] == 2340 and data["grid"] == [2, 2] and data["newline_tokens"] == 36
    assert main(["tokens", "--model", "llava-1.5-7b", "--size", "100x3000"]) == 0
    assert "576" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["tokens", "--model", "llava-9", "--size", "4x4"], "Known names"),
    (["tokens", "--model", "llava-1.5-7b", "--size", "0x4"], "positive"),
    (["tokens", "--model", "llava-1.5-7b", "--size", "big"], "HEIGHTxWIDTH"),
])
def test_cli_errors_are_readable(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_module_entry_point_and_profile_flag():
    out = subprocess.run([sys.executable, "-m", "llava_nb", "--profile", "full", "params", "--model", "tiny-llava-1.5",
                          "--method", "stage1", "--json"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["trainable"] > 0
    bad = subprocess.run([sys.executable, "-m", "llava_nb", "params", "--model", "x", "--method", "zero9"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr

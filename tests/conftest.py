import os

import pytest

os.environ.setdefault("LLAVA_NB_PROFILE", "tiny")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_names():
    return ["tiny-llava-v1", "tiny-llava-1.5", "tiny-llava-v1.6"]

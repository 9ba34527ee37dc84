import os

import pytest

os.environ.setdefault("LLAVA_NB_PROFILE", "tiny")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_names():
    return ["tiny-llava-v1", "tiny-llava-1.5", "tiny-llava-v1.6"]


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``python -m llava_nb`` in this process: exit status, stdout, last non-blank line of stderr."""
    import contextlib
    import io

    from llava_nb.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exit_:  # argparse's errors
            rc = exit_.code
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return rc, out.getvalue(), lines[-1] if lines else ""


@pytest.fixture
def run_cli():
    """The command line run in this process, for comparing what other paths return with what it prints."""
    return _run_cli

"""Bad numbers and names fail at once, in one line that names the value, before anything runs."""

import subprocess
import sys

import pytest

from llava_nb.memory.estimate import MemoryConfigError, estimate_memory


@pytest.mark.parametrize("call, says", [
    (lambda: estimate_memory(int(-7e9), "zero3", accounting="paper"), "parameter count must be positive"),
    (lambda: estimate_memory("llava-1.5-7b", "zero3", micro_bach=3), r"unknown option\(s\) \['micro_bach'\]"),
    (lambda: estimate_memory("llava-1.5-7b", "zero3").fits(80, headroom=-3), r"headroom in \[0, 1\)"),
])
def test_the_calculator_refuses_what_it_cannot_mean(call, says):
    with pytest.raises(MemoryConfigError, match=says):
        call()


@pytest.mark.parametrize("argv, says", [
    (["memory", "--model", "llava-1.5-7b", "--method", "zero3", "--headroom", "-3"], "headroom in [0, 1)"),
    (["train", "--model", "tiny-llava-1.55", "--stage", "2"], "did you mean 'tiny-llava-1.5'?"),
])
def test_the_command_line_says_what_to_fix_in_one_line(argv, says):
    done = subprocess.run([sys.executable, "-m", "llava_nb", *argv], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and says in done.stderr

"""DeepSpeed on CPU probes only the ops it uses (llava_nb._compat.deepspeed_probes_only_the_ops_it_uses): its
all-op probe links a test program against libaio, and in a Jupyter kernel the linker's "cannot find -laio" reached
the chapters' stderr."""

import json
import os
import subprocess
import sys

PROBE = r"""
import json, sys
from llava_nb import _compat
from deepspeed.ops.op_builder.builder import OpBuilder

linked = []  # the ops whose probe compiles and links a test program (async_io: -laio)
real = OpBuilder.has_function
OpBuilder.has_function = lambda self, *a, **k: linked.append(self.name) or real(self, *a, **k)
if sys.argv[1] == "on demand":
    _compat.deepspeed_probes_only_the_ops_it_uses()
import deepspeed.ops
from deepspeed.comm.torch import build_shm_op  # noqa: F401  (the reader: .get(ShareMemCommBuilder.NAME, False))

table = deepspeed.ops.__compatible_ops__
print(json.dumps({"shm": table.get("deepspeed_shm_comm", False), "unknown": table.get("no_such_op", "absent"),
                  "linked": linked}))
"""


def _probe(mode):
    run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_deepspeed_asks_about_shared_memory_without_linking_libaio():
    everything = _probe("all at once")  # DeepSpeed's own table: every op probed on first access
    assert "async_io" in everything["linked"]
    on_demand = _probe("on demand")
    assert on_demand["linked"] == []
    assert on_demand["shm"] == everything["shm"]  # the same answer for the op DeepSpeed does use
    assert on_demand["unknown"] == everything["unknown"] == "absent"

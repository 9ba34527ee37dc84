"""Host memory (``llava_nb.memory.host``) against the resident memory measured on an H200, and its pieces against
the code they come from (DeepSpeed's sub-groups, PyTorch's pinned-memory rounding)."""

from __future__ import annotations

import copy
import json

import pytest

from llava_nb.memory.host import load_host_terms, offload_host_terms, pow2, sub_groups
from llava_nb.memory.shapes import method_sizes, model_shapes
from llava_nb.methods.registry import get_method
from llava_nb.models.architectures import get_config
from llava_nb.paths import DATA_DIR

RECORDS = [json.loads(line) for line in (DATA_DIR / "gpu" / "host_gpu.jsonl").read_text().splitlines()]


def test_pinned_allocations_round_up_to_a_power_of_two():
    assert [pow2(n) for n in (0, 1, 4096, 4097, 4_372_742_144)] == [0, 1, 4096, 8192, 2**33]


def test_sub_groups_close_once_they_reach_the_size():
    """DeepSpeed's _create_fp16_sub_groups: the parameter that crosses the size stays in the group it closes."""
    assert sub_groups([4, 4, 4], 100) == [12]
    assert sub_groups([4, 4, 4, 4, 1], 8) == [8, 8, 1]
    assert sub_groups([3, 6, 2, 9], 8) == [9, 11]


def _offload(layers: int) -> dict:
    config = copy.deepcopy(get_config("llava-1.5-7b"))
    config.text_config.num_hidden_layers = layers
    shapes = model_shapes(config)
    return offload_host_terms(method_sizes(shapes, get_method("zero3-offload")), 1, 10**9, 10 * shapes.hidden)


@pytest.mark.parametrize("record", [r for r in RECORDS if r["kind"] == "offload"], ids=lambda r: f"{r['layers']}L")
def test_offload_host_memory_within_five_percent(record):
    """RSS above the process's own baseline: after set-up (no moments yet), after the steps, and at the peak."""
    terms = _offload(record["layers"])
    steady = sum(v for k, v in terms.items() if k != "AdamW temporaries (the step)")
    predicted = {"after_setup": steady - terms["AdamW moments"], "after": steady, "peak": sum(terms.values())}
    for key, want in predicted.items():
        got = record[key] - record["baseline"]
        assert want == pytest.approx(got, rel=0.05), (key, want / 1e9, got / 1e9)


@pytest.mark.parametrize("record", [r for r in RECORDS if r["kind"] == "load"], ids=lambda r: r["device"])
def test_loading_peaks_at_the_mapped_checkpoint_plus_what_stays_on_the_host(record):
    params = model_shapes("llava-1.5-7b").total
    want = sum(load_host_terms(record["checkpoint_bytes"], params, record["device"]).values())
    assert want == pytest.approx(record["peak"] - record["baseline"], rel=0.02)

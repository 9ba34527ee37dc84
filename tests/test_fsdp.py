"""FSDP2 from inside the ranks (llava_nb.lab.fsdp_demo), 2 CPU processes over gloo."""

import pytest

from llava_nb.lab.fsdp_demo import SHOWN, run_fsdp_demo


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_fsdp_demo(tmp_path_factory.mktemp("fsdp-demo"), processes=2)


def test_every_parameter_is_split_by_rows_and_nothing_is_replicated(ranks):
    for r in ranks:
        assert {row["parameter"] for row in r["shards"]["rows"]} == set(SHOWN)
        for row in r["shards"]["rows"]:
            assert row["placement"] == "S(0)" and row["local shape"][1:] == row["global shape"][1:]
    for name in SHOWN:
        rows = [next(x for x in r["shards"]["rows"] if x["parameter"] == name) for r in ranks]
        assert sum(x["local shape"][0] for x in rows) == rows[0]["global shape"][0]
    assert sum(r["shards"]["bytes_held"] for r in ranks) == ranks[0]["shards"]["bytes_total"]


def test_the_timeline_has_a_gather_per_unit_and_reductions_only_for_trained_units(ranks):
    for r in ranks:
        names = [e["name"] for e in r["timeline"]]
        for i in range(4):
            assert f"FSDP::all_gather (model.language_model.layers.{i})" in names
            assert f"FSDP::post_backward_reduce (model.language_model.layers.{i})" in names
            assert f"FSDP::all_gather (model.vision_tower.encoder.layers.{i})" in names
            assert f"FSDP::post_backward_reduce (model.vision_tower.encoder.layers.{i})" not in names  # frozen
        assert all(e["end_ms"] >= e["start_ms"] >= 0 for e in r["timeline"])


def test_traps(ranks):
    for r in ranks:
        assert r["whole_tower"] == "TypeError: 'NoneType' object is not subscriptable"  # no hidden states captured
        assert r["unused"] == {"vit layers": 4, "last layer (unused) has gradients": False,
                               "layer -2 has gradients": True}

"""The publicly reported fine-tuning outcomes (data/user_reports.json) against the memory calculator
(llava_nb.memory.reports): the table is complete and consistent, and its numbers are estimate_memory's."""

import json
import subprocess
import sys

import pytest

from llava_nb.errors import LlavaNbError, UnknownMethodError
from llava_nb.memory.estimate import DEFAULT_HEADROOM, GIB, estimate_memory
from llava_nb.memory.reports import (PEAK_TOLERANCE, REQUIRED, REPORTS, agreement, estimate_for, load_reports,
                                     reported_gib, verdicts)
from llava_nb.methods.registry import get_method
from llava_nb.models.specs import ALIASES, KNOWN_MODELS


@pytest.fixture(scope="module")
def records():
    return load_reports()


@pytest.fixture(scope="module")
def rows():
    return verdicts()


def test_every_record_is_cited_and_complete(records):
    assert len(records) >= 15
    for r in records:
        assert all(k in r for k in REQUIRED), r["id"]
        assert r["source"].startswith("https://") and " " not in r["source"], r["id"]
        assert isinstance(r["quote"], str) and 10 <= len(r["quote"]) <= 300, r["id"]
        assert isinstance(r["note"], str) and len(r["note"]) >= 40, r["id"]  # the assumptions are written down
        assert isinstance(r["gpus"], int) and r["gpus"] >= 1, r["id"]
        assert isinstance(r["micro_batch"], int) and r["micro_batch"] >= 1, r["id"]
        assert isinstance(r["seq_len"], int) and isinstance(r["grad_checkpointing"], bool), r["id"]
        card = r["gpu_memory_gib"]
        assert card is None or 8 < card < 200, r["id"]
        if r["outcome"] in ("fits", "oom"):
            assert card is not None, f"{r['id']}: a fits/oom report needs the card's memory"
    assert len({r["id"] for r in records}) == len(records)


def test_models_and_methods_are_the_calculators(records):
    comparable = [r for r in records if r.get("comparable", True)]
    assert len(comparable) >= 15
    for r in comparable:
        if isinstance(r["model"], int):
            assert r.get("accounting") == "paper", f"{r['id']}: a bare parameter count needs accounting='paper'"
        else:
            assert r["model"] in KNOWN_MODELS or r["model"] in ALIASES, r["id"]
        get_method(r["method"])  # raises for a method the registry does not know
    for r in records:
        if r.get("comparable", True) is False:
            assert len(r["not_comparable"]) >= 40, r["id"]
    # a setting the registry refuses cannot be marked comparable
    for r in records:
        try:
            get_method(r["method"])
        except UnknownMethodError:
            assert r.get("comparable", True) is False, f"{r['id']}: {r['method']} is refused by the registry"


def test_verdicts_cover_every_record_with_estimate_memorys_numbers(records, rows):
    assert [row["id"] for row in rows] == [r["id"] for r in records]
    for r, row in zip(records, rows):
        if not row["comparable"]:
            assert row["agree"] is None and row["reason"] == r["not_comparable"]
            continue
        est = estimate_for(r)
        assert row["predicted_peak_gib"] == est.peak_gib and row["predicted_steady_gib"] == est.steady_gib
        assert row["predicted_steady_gib"] <= row["predicted_peak_gib"]
        if r["gpu_memory_gib"] is not None:
            assert row["predicted_fits"] == est.fits(r["gpu_memory_gib"], DEFAULT_HEADROOM)
        gib = reported_gib(r["outcome"])
        if gib is None:
            assert row["agree"] == (row["predicted_fits"] == (r["outcome"] == "fits"))
        else:
            assert row["relative_error"] == pytest.approx(est.peak_gib / gib - 1)
            assert row["agree"] == (abs(row["relative_error"]) <= PEAK_TOLERANCE)


def test_one_row_recomputed_by_hand(records, rows):
    """The README's 13B recipe, with estimate_memory called directly (not through estimate_for)."""
    i = next(i for i, r in enumerate(records) if r["id"] == "llava-readme-13b-full-8xa100-80")
    est = estimate_memory("llava-1.5-13b", "zero3", gpus=8, micro_batch=16, seq_len=2048, grad_checkpointing=True)
    assert rows[i]["predicted_peak_gib"] == est.peak_gib
    assert rows[i]["predicted_fits"] == (est.peak_gib <= records[i]["gpu_memory_gib"] * (1 - DEFAULT_HEADROOM))
    # a stage-1 record is the projector-only method, which holds less than stage 2 at the same settings
    j = next(i for i, r in enumerate(records) if r.get("stage") == 1)
    r = records[j]
    stage2 = estimate_memory(r["model"], r["method"], gpus=r["gpus"], micro_batch=r["micro_batch"],
                             seq_len=r["seq_len"])
    assert rows[j]["predicted_steady_gib"] < stage2.steady_gib
    # a numeric report in GB is read as 1e9 bytes
    assert reported_gib({"reported_gb": 35}) == pytest.approx(35e9 / GIB)


def test_agreement_is_reported(rows):
    agreed, compared = agreement(rows)
    assert compared == sum(row["comparable"] for row in rows) and 0 <= agreed <= compared
    misses = [row["id"] for row in rows if row["comparable"] and not row["agree"]]
    assert len(misses) == compared - agreed
    print(f"\ncalculator vs public reports: {agreed}/{compared} agree ({agreed / compared:.0%}); "
          f"{len(rows) - compared} not comparable; misses: {', '.join(misses)}")


def test_the_checks_can_fail(tmp_path, records):
    good = dict(next(r for r in records if r["outcome"] == "fits" and r.get("comparable", True)))
    # a report that contradicts the calculator is a disagreement, not silently agreed
    flipped = {**good, "outcome": "oom"}
    assert verdicts([good])[0]["agree"] is not verdicts([flipped])[0]["agree"]
    far = {**good, "outcome": {"peak_gib": verdicts([good])[0]["predicted_peak_gib"] * 3}}
    assert verdicts([far])[0]["agree"] is False
    # a record without a quote, with an unknown outcome, or an unknown model is refused
    for bad in ({k: v for k, v in good.items() if k != "quote"}, {**good, "outcome": "maybe"},
                {**good, "id": "x", "source": "not a url"}):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps([bad]))
        with pytest.raises(LlavaNbError):
            load_reports(path)
    with pytest.raises(LlavaNbError):
        verdicts([{**good, "model": "llava-9-70b"}])
    assert REPORTS.exists()


def test_reports_module_imports_no_torch():
    code = ("import sys, llava_nb.memory.reports as m; m.verdicts(); "
            "heavy = {'torch', 'transformers', 'peft', 'accelerate', 'deepspeed', 'bitsandbytes', 'numpy'}; "
            "assert not heavy & set(sys.modules), heavy & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_miss_is_explained_and_only_misses_are():
    """A report the calculator disagrees with carries ``miss``, the reason as far as the source tells it; a new
    disagreement (a changed calculator, a new report) fails here until it is explained."""
    from llava_nb.memory.reports import verdicts

    rows = verdicts()
    unexplained = [r["id"] for r in rows if r["agree"] is False and not r["miss"]]
    stale = [r["id"] for r in rows if r["agree"] is not False and r["miss"]]
    assert not unexplained and not stale, (unexplained, stale)

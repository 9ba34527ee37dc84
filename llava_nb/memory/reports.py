"""The calculator against what users publicly reported: ``data/user_reports.json`` beside ``estimate_memory``.

Pure Python. Each record cites a public source (``source``, a URL, and ``quote``, its words verbatim) for one outcome
of fine-tuning a LLaVA-family model at a stated configuration: ``"fits"``, ``"oom"``, or a number, ``{"peak_gib": x}``
(GiB) or ``{"reported_gb": x}`` (GB as the source prints it, read as 1e9 bytes). ``model``, ``method``, ``gpus``,
``micro_batch``, ``seq_len`` and ``grad_checkpointing`` are ``estimate_memory``'s arguments; ``gpu_memory_gib`` is the
card's usable memory (PyTorch's total capacity, as ``H100_80GB_GIB``; null for a table that names no card); ``note``
says what had to be assumed. Optional: ``stage`` (1: LLaVA's projector-only stage), ``options`` (``estimate_memory``'s
``**options``, e.g. ``lora_r``), ``accounting`` (``"paper"`` with a bare parameter count) and ``comparable: false``
with ``not_comparable``, the reason the calculator cannot express the setting (such a record is not forced into it).

``verdicts()`` puts the calculator's prediction (steady and peak GiB; ``fits`` with the default headroom) beside each
report: a fits/oom report agrees when the verdict matches, a number when the peak is within ``PEAK_TOLERANCE``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LlavaNbError
from ..paths import DATA_DIR
from .estimate import DEFAULT_HEADROOM, GIB, MemoryEstimate, estimate_memory, get_method
from .validation import PEAK_TOLERANCE

REPORTS = DATA_DIR / "user_reports.json"
REQUIRED = ("id", "source", "quote", "model", "method", "gpus", "gpu_memory_gib", "micro_batch", "seq_len",
            "grad_checkpointing", "outcome", "note")
VERDICTS = ("fits", "oom")
NUMBERS = {"peak_gib": GIB, "reported_gb": 10**9}  # outcome key -> bytes per unit


def load_reports(path: Path | str = REPORTS) -> list[dict]:
    """The records of ``path``, each checked for the required fields, a URL, a quote and a known outcome."""
    records = json.loads(Path(path).read_text())
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise LlavaNbError(f"report {r.get('id', i)!r} lacks {missing}")
        if not str(r["source"]).startswith("https://") or not str(r["quote"]).strip():
            raise LlavaNbError(f"report {r['id']!r} needs a URL source and a verbatim quote")
        reported_gib(r["outcome"])  # raises for an unknown outcome
        if r.get("comparable", True) is False and not str(r.get("not_comparable", "")).strip():
            raise LlavaNbError(f"report {r['id']!r} is marked not comparable without a reason")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise LlavaNbError("report ids must be unique")
    return records


def reported_gib(outcome) -> float | None:
    """The reported number in GiB, or None for a "fits"/"oom" report."""
    if outcome in VERDICTS:
        return None
    if isinstance(outcome, dict) and len(outcome) == 1 and next(iter(outcome)) in NUMBERS:
        (key, value), = outcome.items()
        if isinstance(value, (int, float)) and value > 0:
            return value * NUMBERS[key] / GIB
    raise LlavaNbError(f"outcome must be 'fits', 'oom', {{'peak_gib': x}} or {{'reported_gb': x}}, got {outcome!r}")


def estimate_for(record: dict) -> MemoryEstimate:
    """``estimate_memory`` with the record's settings (its ``stage``, ``accounting`` and ``options`` included)."""
    method = get_method(record["method"])
    if record.get("stage", 2) != 2:
        method = method.for_stage(record["stage"])
    return estimate_memory(record["model"], method, gpus=record["gpus"], micro_batch=record["micro_batch"],
                           seq_len=record["seq_len"], grad_checkpointing=record["grad_checkpointing"],
                           accounting=record.get("accounting", "measured"), **record.get("options", {}))


def verdicts(records: list[dict] | None = None, headroom: float = DEFAULT_HEADROOM,
             tolerance: float = PEAK_TOLERANCE) -> list[dict]:
    """One row per record: the report beside the calculator's prediction, and whether they agree (None when the
    record is not comparable; its ``reason`` says why)."""
    rows = []
    for r in load_reports() if records is None else records:
        row = {k: r[k] for k in ("id", "model", "method", "gpus", "gpu_memory_gib", "micro_batch", "seq_len",
                                 "outcome")}
        row["stage"], row["miss"] = r.get("stage", 2), r.get("miss")  # miss: why the calculator disagrees
        if r.get("comparable", True) is False:
            rows.append({**row, "comparable": False, "reason": r["not_comparable"], "agree": None})
            continue
        est = estimate_for(r)
        card = r["gpu_memory_gib"]
        row.update(comparable=True, predicted_steady_gib=est.steady_gib, predicted_peak_gib=est.peak_gib,
                   peak_phase=est.peak_phase, predicted_fits=est.fits(card, headroom) if card else None)
        gib = reported_gib(r["outcome"])
        if gib is None:
            if card is None:
                raise LlavaNbError(f"report {r['id']!r} says {r['outcome']!r} but names no card")
            row["agree"] = row["predicted_fits"] == (r["outcome"] == "fits")
        else:
            row.update(reported_gib=gib, relative_error=est.peak_gib / gib - 1)
            row["agree"] = abs(row["relative_error"]) <= tolerance
        rows.append(row)
    return rows


def agreement(rows: list[dict]) -> tuple[int, int]:
    """(agreements, comparable records) of ``verdicts()`` rows."""
    compared = [row for row in rows if row["comparable"]]
    return sum(row["agree"] for row in compared), len(compared)

"""The calculator against real runs: read ``data/measurements/*.jsonl`` and put each point beside its prediction."""

from __future__ import annotations

import json
from pathlib import Path

from .estimate import GIB, OPTIONS, estimate_memory
from ..paths import DATA_DIR

MEASUREMENTS = DATA_DIR / "measurements" / "memory_gpu.jsonl"
STEADY_TOLERANCE = 0.03
PEAK_TOLERANCE = 0.10


def load_measurements(path: Path | str = MEASUREMENTS) -> list[dict]:
    """One record per (model, method, gpus, checkpointing, micro_batch, seq_len); the last measurement wins."""
    records = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        records[(r["model"], r["method"], r["gpus"], r["grad_checkpointing"], r["micro_batch"], r["seq_len"])] = r
    return list(records.values())


def compare(records: list[dict] | None = None, gpu_memory_gib: float | None = None) -> list[dict]:
    """Rows of measured against predicted steady/peak (GiB), their relative errors and the fits verdicts."""
    rows = []
    for r in records if records is not None else load_measurements():
        # the DeepSpeed settings the run changed, where the calculator models them (``estimate.OPTIONS``)
        overrides = {k: v for k, v in (r.get("zero_overrides") or {}).items() if k in OPTIONS}
        est = estimate_memory(r["model"], r["method"], gpus=r["gpus"], micro_batch=r["micro_batch"],
                              seq_len=r["seq_len"], grad_checkpointing=r["grad_checkpointing"], **overrides)
        usable = gpu_memory_gib or r.get("cap_gib") or r["versions"].get("gpu_total_gib")
        row = {"method": r["method"], "gpus": r["gpus"], "micro_batch": r["micro_batch"], "seq_len": r["seq_len"],
               "grad_checkpointing": r["grad_checkpointing"], "gpu": r["versions"].get("gpu"),
               "usable_gib": usable, "measured_oom": r["oom"], "predicted_fits": est.fits(usable),
               "predicted_steady_gib": est.steady_gib, "predicted_peak_gib": est.peak_gib,
               "peak_phase": est.peak_phase}
        if not r["oom"]:
            row.update(measured_steady_gib=r["steady"] / GIB, measured_peak_gib=r["peak"] / GIB)
            row["steady_error"] = est.steady_gib / row["measured_steady_gib"] - 1
            row["peak_error"] = est.peak_gib / row["measured_peak_gib"] - 1
        row["verdict_ok"] = row["predicted_fits"] != r["oom"]
        rows.append(row)
    return rows


def predicted_holdings(model, method: str, gpus: int, micro_batch: int, seq_len: int, rank: int = 0,
                       **options) -> dict:
    """The calculator's bytes for what ``llava_nb.lab.measure`` reads from one rank (``holdings``): weights, fp32
    master weights, optimizer states, and the gradients the optimizer reads at its step."""
    est = estimate_memory(model, method, gpus=gpus, micro_batch=micro_batch, seq_len=seq_len, rank=rank, **options)
    return {"weights": est.breakdown["weights"], "master_weights": est.breakdown.get("master_weights", 0),
            "optimizer_states": est.breakdown["optimizer_states"],
            "gradients": est.phases["optimizer step"]["gradients"]}

"""The calculator against real runs: read ``data/measurements/*.jsonl`` (the measurement harness) and
``data/gpu/train_full.jsonl`` (``train()`` itself) and put each point beside its prediction; split them into the
models the activation terms were written against and the models held out."""

from __future__ import annotations

import json
from pathlib import Path

from .estimate import GIB, OPTIONS, estimate_memory
from ..paths import DATA_DIR

MEASUREMENTS = DATA_DIR / "measurements" / "memory_gpu.jsonl"
TRAIN_RUNS = DATA_DIR / "gpu" / "train_full.jsonl"
#: the one-block walks on a GPU that the activation terms were written and checked against
WALKS = DATA_DIR / "gpu" / "activations_gpu.jsonl"
STEADY_TOLERANCE = 0.03
PEAK_TOLERANCE = 0.10
#: what the calculator aims for on every run
STEADY_TARGET, PEAK_TARGET = 0.02, 0.05


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
        row = {"model": r["model"], "method": r["method"], "gpus": r["gpus"], "micro_batch": r["micro_batch"],
               "seq_len": r["seq_len"], "grad_checkpointing": r["grad_checkpointing"], "gpu": r["versions"].get("gpu"),
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


def compare_train_runs(path: Path | str = TRAIN_RUNS) -> list[dict]:
    """Rows of ``train()``'s own measurements (each rank's allocator peak and steady memory, the busiest rank)
    beside the calculator's prediction at the run's micro-batch and longest sequence. A setting measured again
    (more steps, or after a fix) replaces its earlier record; runs that did not train are left out."""
    latest = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        latest[(r["model"], r["method"], r["gpus"], r.get("micro_batch_override"))] = r
    rows = []
    for r in (r for r in latest.values() if "measured" in r):
        m = r["measured"]
        est = estimate_memory(r["model"], r["method"], gpus=r["gpus"], micro_batch=r["micro_batch"],
                              seq_len=m["max_seq_len"])
        row = {"model": r["model"], "method": r["method"], "gpus": r["gpus"], "steps": r["steps"],
               "micro_batch": r["micro_batch"], "seq_len": m["max_seq_len"], "tokens_per_s": m["tokens_per_s"],
               "mfu": m.get("mfu"), "measured_steady_gib": max(m["steady_gib"]),
               "predicted_steady_gib": est.steady_gib, "measured_peak_gib": max(m["peak_gib"]),
               "predicted_peak_gib": est.peak_gib}
        row["steady_error"] = est.steady_gib / row["measured_steady_gib"] - 1
        row["peak_error"] = est.peak_gib / row["measured_peak_gib"] - 1
        rows.append(row)
    return rows


def held_out(rows: list[dict], walked: set | None = None) -> list[dict]:
    """The runs split in two: those of the models whose blocks were walked on a GPU while the activation terms were
    written (``WALKS``), where the terms could have been tuned to the data, and the others, held out. For each half:
    the runs, the worst steady and peak errors, and how many runs meet ``STEADY_TARGET`` and ``PEAK_TARGET``."""
    if walked is None:
        walked = {json.loads(line)["model"] for line in WALKS.read_text().splitlines()}
    halves = []
    for name, keep in (("walked", lambda m: m in walked), ("held out", lambda m: m not in walked)):
        part = [r for r in rows if keep(r["model"]) and "steady_error" in r]
        halves.append({"half": name, "models": sorted({r["model"] for r in part}), "runs": len(part),
                       "worst steady error": max((abs(r["steady_error"]) for r in part), default=None),
                       "worst peak error": max((abs(r["peak_error"]) for r in part), default=None),
                       "steady within target": sum(abs(r["steady_error"]) <= STEADY_TARGET for r in part),
                       "peak within target": sum(abs(r["peak_error"]) <= PEAK_TARGET for r in part)})
    return halves

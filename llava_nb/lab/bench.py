"""Benchmarks (``make bench``), written to ``data/benchmarks/`` with the machine's facts:

* ``python -m llava_nb.lab.bench book/*.ipynb``: each chapter's execution time in a fresh kernel, as ``pytest --nbmake``
  and the book build run it (kernel start included) -> ``chapters.json``;
* ``python -m llava_nb.lab.bench pipeline``: the whole tiny pipeline from nothing (pretrained parts, synthetic data,
  stage 1, stage 2, evaluation), in temporary folders, through one command line -> ``tiny_pipeline.json``;
* ``python -m llava_nb.lab.bench seeds``: the tiny recipe's stages 1 and 2 with seeds 0, 1 and 2 (seed 0 is the
  pipeline's run) -> ``tiny_seeds.json``;
* ``python -m llava_nb.lab.bench step-time``: one stage-2 training step of the tiny LLaVA-1.5 on one CPU core (each
  of the 2 training processes' share), SDPA or eager attention, fp32 or bf16 autocast -> ``cpu_step_time.json``, or
  ``cpu_step_time_no_bf16.json`` on a CPU without bf16 instructions;
* ``python -m llava_nb.lab.bench memory``: how long one ``estimate_memory`` call takes once the model's shapes are
  cached (the widgets need well under 5 ms) -> ``memory_calculator.json``;
* ``python -m llava_nb.lab.bench cli``: the wall time of ``import llava_nb`` and of the pure-arithmetic commands
  (``tokens``, ``params``, ``memory``), each in a fresh process, median of 5 -> ``cli.json``;
* ``python -m llava_nb.lab.bench_live``: the built book's live calculators, from page load to the first result in
  headless Chromium -> ``live_calculators.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import date
from pathlib import Path

from ..paths import BENCHMARKS_DIR, DATA_DIR, REPO_ROOT
from .machine import machine

BUDGET_S = 90.0


def time_notebook(path: Path, timeout: int = 600) -> float:
    """Execute a notebook in a fresh kernel (cwd = its folder) and return the wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - start


PIPELINE_BUDGET_S = 300.0
ACCURACY_TARGET = 0.9


def _train_stage2(model: str, env: dict, *args: str) -> dict:
    """Run ``python -m llava_nb train --model M --stage 2 [args]`` as a reader does, in ``env``, and return the
    run's ``result.json`` (the command's last line is a summary that names the run's folder)."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "llava_nb", "train", "--model", model, "--stage", "2", *args,
                          "--set", "log_every=0"], env=env, check=True, capture_output=True, text=True).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    return json.loads((Path(summary["final_dir"]).parent / "result.json").read_text())


def bench_pipeline(model: str = "tiny-llava-1.5") -> dict:
    """Run the tiny pipeline from an empty cache, pretraining included, as a reader runs it: one command,
    ``python -m llava_nb train --model M --stage 2``, which trains the missing pretrained parts, stage 1 and stage 2
    and evaluates. Records the wall time, the parts' own training times (from their logs), whether the parts it
    trained are bit for bit the committed ones, and the accuracies."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LLAVA_NB_CACHE": f"{tmp}/cache", "LLAVA_NB_PRETRAINED": f"{tmp}/pretrained"}
        start = time.perf_counter()
        result = _train_stage2(model, env)
        total = time.perf_counter() - start
        logs = [json.loads(p.read_text()) for p in sorted(Path(tmp, "pretrained").glob("*/training_log.json"))]
        if len(logs) != 2:
            raise RuntimeError(f"expected the two pretrained parts' logs under {tmp}/pretrained, found {len(logs)}")
        same_parts = {part.parent.name: _same_weights(part, DATA_DIR / "pretrained" / part.parent.name / part.name)
                      for part in sorted(Path(tmp, "pretrained").glob("*/model.safetensors"))}
    record = {"model": model, "seconds_total": round(total, 1),
              "seconds_pretraining": round(sum(log["seconds"] for log in logs), 1),
              "seconds_stage1": result["stage1"]["seconds"], "seconds_stage2": result["seconds"],
              "eval_accuracy": result["eval_accuracy"], "eval_blank_accuracy": result["eval_blank_accuracy"],
              "eval_by_type": result["eval_by_type"], "num_processes": result["num_processes"],
              "stage2_steps": result["steps"], "parts_equal_committed": same_parts,
              "stage2_recipe": {k: result["hyperparams"][k] for k in ("epochs", "lr", "batch_size", "weight_decay",
                                                                      "mixed_precision", "attn_implementation",
                                                                      "group_by_length")},
              "budget_s": PIPELINE_BUDGET_S, "accuracy_target": ACCURACY_TARGET,
              "within_budget": total <= PIPELINE_BUDGET_S, "accuracy_target_met": result["eval_accuracy"] >= ACCURACY_TARGET,
              "machine": machine(), "date": date.today().isoformat()}
    (BENCHMARKS_DIR / "tiny_pipeline.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def bench_seeds(model: str = "tiny-llava-1.5", seeds: tuple = (0, 1, 2)) -> dict:
    """Run the tiny recipe's stage 2 (and its stage 1) with each seed, as a reader does:
    ``python -m llava_nb train --model M --stage 2 --seed S``, from the committed pretrained parts, in a temporary
    cache. A seed changes the synthetic data, the held-out questions and the initialisation. Seed 0 is the pipeline
    benchmark's run, so its accuracy must equal the benchmark's (the runs are deterministic)."""
    import tempfile

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LLAVA_NB_CACHE": f"{tmp}/cache"}
        for seed in seeds:
            r = _train_stage2(model, env, "--seed", str(seed))
            runs.append({"seed": seed, "eval_accuracy": r["eval_accuracy"], "eval_by_type": r["eval_by_type"],
                         "eval_blank_accuracy": r["eval_blank_accuracy"], "seconds_stage2": r["seconds"],
                         "epochs": r["hyperparams"]["epochs"],
                         "attn_implementation": r["hyperparams"]["attn_implementation"]})
    record = {"model": model, "runs": runs, "accuracy_target": ACCURACY_TARGET, "machine": machine(),
              "date": date.today().isoformat()}
    (BENCHMARKS_DIR / "tiny_seeds.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def bench_step_time(model: str = "tiny-llava-1.5", micro_batch: int = 16, threads: int = 1) -> dict:
    """Time one stage-2 step (``throughput.cpu_step_profile``) of the tiny recipe's model on the first
    ``micro_batch`` samples of its synthetic data, on ``threads`` threads, for each attention kernel and precision.
    The batch and model are those of ``train(model, 2)``'s workers: 16 samples each, 1 thread each on 2 cores."""
    import copy

    import torch

    from ..data.records import load_conversations
    from ..data.dataset import Collator, ConversationDataset
    from ..methods.stages import freeze_for_stage
    from .throughput import cpu_step_profile
    from ..training.config import TINY_HYPERPARAMS
    from ..training.loading import default_template, load_for_training
    from ..training.api import synthetic_data

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = synthetic_data(model)
    net, tok, image_processor = load_for_training(model, 2)
    freeze_for_stage(net, "stage2")
    records = load_conversations(data["instruct"], data["image_folder"])[:micro_batch]
    dataset = ConversationDataset(records, tok, net.config, default_template(net.config, 2),
                                  TINY_HYPERPARAMS[2]["max_length"], image_processor)
    batch = Collator(tok.pad_token_id)([dataset[i] for i in range(micro_batch)])
    rows = []
    for attention in ("sdpa", "eager"):
        for bf16 in (False, True):
            copy_ = copy.deepcopy(net)
            copy_.set_attn_implementation(attention)
            rows.append({"attention": attention, "precision": "bf16 autocast" if bf16 else "fp32",
                         **cpu_step_profile(copy_, batch, bf16)})
    record = {"model": model, "micro_batch": micro_batch, "seq_len": batch["input_ids"].shape[1], "threads": threads,
              "rows": rows, "machine": machine(), "date": date.today().isoformat()}
    # the chapter's analysis reads a CPU with bf16 instructions; one without them gets its own file
    name = "cpu_step_time.json" if record["machine"]["bf16_instructions"] else "cpu_step_time_no_bf16.json"
    (BENCHMARKS_DIR / name).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two safetensors files hold bit-identical tensors under the same names."""
    import torch
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b) if b.exists() else {}
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


MEMORY_BUDGET_MS = 5.0


def bench_memory(repeats: int = 200) -> dict:
    """Median time of one ``estimate_memory`` call per model and method, shapes cached (the first call per model
    computes them from the config's numbers and is timed separately)."""
    import statistics

    from ..memory.estimate import METHODS, estimate_memory

    record = {"budget_ms": MEMORY_BUDGET_MS, "calls": {}, "first_call_s": {}}
    for model in ("llava-1.5-7b", "llava-v1.6-mistral-7b", "llava-1.5-13b"):
        start = time.perf_counter()
        estimate_memory(model, "zero3", gpus=4)
        record["first_call_s"][model] = round(time.perf_counter() - start, 3)
        for method in METHODS:
            times = []
            for i in range(repeats):
                t = time.perf_counter()
                estimate_memory(model, method, gpus=1 + i % 8, micro_batch=1 + i % 16)
                times.append(time.perf_counter() - t)
            record["calls"][f"{model} {method}"] = round(statistics.median(times) * 1e3, 4)
    record["max_median_ms"] = max(record["calls"].values())
    record["within_budget"] = record["max_median_ms"] < MEMORY_BUDGET_MS
    record["machine"] = machine()
    record["date"] = date.today().isoformat()
    (BENCHMARKS_DIR / "memory_calculator.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


IMPORT_BUDGET_S = 1.0
CLI_BUDGET_S = 1.5
#: a typical invocation of each pure-arithmetic command (none imports torch or transformers)
CLI_COMMANDS = {
    "tokens": ["tokens", "--model", "llava-v1.6-mistral-7b", "--size", "480x640"],
    "params": ["params", "--model", "llava-1.5-7b", "--method", "lora"],
    "memory": ["memory", "--model", "llava-1.5-7b", "--method", "zero3", "--gpus", "4", "--micro-batch", "8"],
}


def _wall_time(argv: list[str]) -> float:
    """Seconds from starting ``python argv`` in a fresh process to its exit (it must succeed)."""
    import subprocess

    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, capture_output=True, cwd=REPO_ROOT)
    return time.perf_counter() - start


def _heavy_imports(argv: list[str]) -> list[str]:
    """Which of torch and transformers ``python argv`` imports (read from ``-X importtime``)."""
    import subprocess

    err = subprocess.run([sys.executable, "-X", "importtime", *argv], check=True, capture_output=True, text=True,
                         cwd=REPO_ROOT).stderr
    return sorted({line.rsplit("|", 1)[-1].strip() for line in err.splitlines()} & {"torch", "transformers"})


def bench_cli(repeats: int = 5) -> dict:
    """Median wall time over ``repeats`` fresh processes of ``python -c "import llava_nb"`` and of
    ``python -m llava_nb tokens|params|memory ...`` (``CLI_COMMANDS``), interpreter start-up included."""
    import statistics

    runs = {"import llava_nb": ["-c", "import llava_nb"]}
    runs.update({" ".join(["python -m llava_nb", *argv]): ["-m", "llava_nb", *argv] for argv in CLI_COMMANDS.values()})
    _wall_time(["-c", "pass"])  # warm the file cache: the first start of the interpreter reads it from disk
    seconds = {k: [_wall_time(argv) for _ in range(repeats)] for k, argv in runs.items()}
    median = {k: round(statistics.median(v), 3) for k, v in seconds.items()}
    budget = {k: IMPORT_BUDGET_S if k == "import llava_nb" else CLI_BUDGET_S for k in runs}
    record = {"repeats": repeats, "median_s": median,
              "runs_s": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
              "budget_s": budget, "within_budget": all(median[k] < budget[k] for k in runs),
              "python_startup_s": round(statistics.median(_wall_time(["-c", "pass"]) for _ in range(repeats)), 3),
              "heavy_imports": {k: _heavy_imports(argv) for k, argv in runs.items()},
              "machine": machine(), "date": date.today().isoformat()}
    (BENCHMARKS_DIR / "cli.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(paths: list[str]) -> int:
    if paths == ["cli"]:
        record = bench_cli()
        print(json.dumps({"median_s": record["median_s"], "within_budget": record["within_budget"]}))
        return 0 if record["within_budget"] else 1
    if paths == ["memory"]:
        record = bench_memory()
        print(json.dumps({k: record[k] for k in ("max_median_ms", "within_budget", "first_call_s")}))
        return 0 if record["within_budget"] else 1
    if paths == ["seeds"]:
        record = bench_seeds()
        print(json.dumps([{k: r[k] for k in ("seed", "eval_accuracy")} for r in record["runs"]]))
        return 0
    if paths == ["step-time"]:
        record = bench_step_time()
        print(json.dumps([{k: r[k] for k in ("attention", "precision", "step_ms")} for r in record["rows"]]))
        return 0
    if paths == ["pipeline"]:
        record = bench_pipeline()
        print(json.dumps({k: v for k, v in record.items() if k != "machine"}))
        return 0
    out = BENCHMARKS_DIR / "chapters.json"
    record = json.loads(out.read_text()) if out.exists() else {"chapters": {}}
    record["budget_s"] = BUDGET_S
    record["machine"] = machine()  # of the latest call; each chapter's entry names its own
    record["date"] = date.today().isoformat()
    import tempfile

    # Each chapter runs twice against a fresh, empty cache: the first execution is cold (it trains and caches the
    # runs it needs); the budget applies to the second, which reuses them, as a reader's second visit and the book
    # build after `make test` do.
    os.environ["LLAVA_NB_CACHE"] = tempfile.mkdtemp(prefix="llava_nb_bench_")
    for p in map(Path, paths):
        first = time_notebook(p)
        seconds = time_notebook(p)
        record["chapters"][p.name] = {"seconds": round(seconds, 1), "first_run_seconds": round(first, 1),
                                      "within_budget": seconds <= BUDGET_S, "date": record["date"],
                                      "cpus": record["machine"]["cpus"], "torch": record["machine"]["torch"]}
        print(f"{p.name}: {seconds:.1f} s (first run {first:.1f} s; {'ok' if seconds <= BUDGET_S else 'OVER BUDGET'})",
              flush=True)
    # keep the other chapters' earlier measurements, drop chapters that no longer exist
    record["chapters"] = {k: v for k, v in sorted(record["chapters"].items()) if (REPO_ROOT / "book" / k).exists()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(v["within_budget"] for v in record["chapters"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

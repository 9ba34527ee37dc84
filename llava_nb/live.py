"""The book's live calculators: the command line's ``memory``, ``compare``, ``tokens`` and ``params`` verbs, called
with a page's settings.

In the built book, ``book/_ext/static/llava-calculator.js`` runs this module under Pyodide (Python compiled to
WebAssembly, in the reader's browser) with the pure-Python core of ``llava_nb``, which imports no torch. Every
result is what ``python -m llava_nb memory ... --json`` (or ``compare``, ``tokens``, ``params``) prints for the same
settings: ``run`` builds that command's arguments and calls the command line's own ``main``. Nothing here computes;
the JavaScript only wires the form to ``run``.

A calculator's controls are named after the arguments (``FIELDS``); their values arrive as strings, as typed, and
the command line checks them, so a bad value gets the command line's own one-line error.
"""

from __future__ import annotations

import contextlib
import io

#: the settings of each calculator, in the order the page shows them
FIELDS = {"memory": ("model", "method", "gpus", "micro_batch", "seq_len", "grad_checkpointing", "gpu_memory"),
          "compare": ("model", "gpus", "micro_batch", "seq_len", "grad_checkpointing", "gpu_memory"),
          "tokens": ("model", "height", "width"),
          "lora": ("model", "lora_r", "lora_targets")}
#: the settings a calculator starts from
DEFAULTS = {"memory": {"model": "llava-1.5-7b", "method": "zero3", "gpus": "4", "micro_batch": "8",
                       "seq_len": "2048", "grad_checkpointing": "true", "gpu_memory": "79.18"},
            "compare": {"model": "llava-1.5-7b", "gpus": "4", "micro_batch": "1", "seq_len": "2048",
                        "grad_checkpointing": "true", "gpu_memory": "79.18"},
            "tokens": {"model": "llava-v1.6-mistral-7b", "height": "672", "width": "1008"},
            "lora": {"model": "llava-1.5-7b", "lora_r": "128",
                     "lora_targets": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"}}
#: controls that hold several values (comma-separated in the settings and the URL)
MULTIPLE = ("lora_targets",)
#: the ranks the LoRA calculator offers
LORA_RANKS = ("1", "2", "4", "8", "16", "32", "64", "128", "256")


def argv(kind: str, settings: dict) -> list[str]:
    """The command line of ``kind`` ("memory" or "tokens") for ``settings`` (strings, by ``FIELDS`` name; missing
    ones take ``DEFAULTS``)."""
    if kind not in FIELDS:
        raise ValueError(f"unknown calculator {kind!r}; one of {', '.join(FIELDS)}")
    s = {**DEFAULTS[kind], **{k: str(v) for k, v in settings.items() if k in FIELDS[kind]}}
    if kind == "tokens":
        return ["tokens", "--model", s["model"], "--size", f"{s['height']}x{s['width']}", "--json"]
    if kind == "lora":
        return ["params", "--model", s["model"], "--method", "lora", "--lora-r", s["lora_r"], "--lora-targets",
                s["lora_targets"], "--json"]
    method = ["--method", s["method"]] if kind == "memory" else []  # memory and compare: verbs named as the kinds
    args = [kind, "--model", s["model"], *method, "--gpus", s["gpus"], "--micro-batch", s["micro_batch"],
            "--seq-len", s["seq_len"], "--gpu-memory", s["gpu_memory"], "--json"]
    if s["grad_checkpointing"].lower() in ("false", "0", "off", ""):
        args.append("--no-grad-checkpointing")
    return args


def run(kind: str, settings: dict) -> dict:
    """``{"rc", "json", "error"}``: the command line's exit status, what it printed (its JSON) and its one-line
    error, for ``argv(kind, settings)``."""
    from .cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv(kind, settings))
        except SystemExit as exit_:  # argparse: a value of the wrong type or choice
            rc = exit_.code if isinstance(exit_.code, int) else 2
        except Exception as exc:  # noqa: BLE001 (a page must show it, not freeze)
            print(f"error: {type(exc).__name__}: {exc}", file=err)
            rc = 1
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return {"rc": rc, "json": out.getvalue().strip() if rc == 0 else None, "error": lines[-1] if lines else None}


def choices() -> dict:
    """The options of the calculators' lists: every released model (the tiny ones read their numbers from files the
    page does not carry), every method, LoRA's ranks and the LLM Linears it can adapt (``multiple``: the lists
    that take several)."""
    from .methods.registry import METHODS
    from .models.params import parameter_breakdown
    from .models.specs import KNOWN_MODELS

    linears = dict.fromkeys(leaf for leaf, _, _ in parameter_breakdown(DEFAULTS["lora"]["model"])[2])
    return {"model": [m for m in KNOWN_MODELS if not m.startswith("tiny-")], "method": list(METHODS),
            "lora_r": list(LORA_RANKS), "lora_targets": list(linears), "multiple": list(MULTIPLE)}

"""One training function for both of LLaVA's stages, any method, any hardware.

    result = train("tiny-llava-1.5", stage=2)            # 2 CPU processes over gloo, or every GPU over NCCL

``train`` prepares everything that must happen once (synthetic data, the pretrained parts, stage 1 when stage 2 is
asked for a model name), then runs ``run_worker`` in every process: through ``accelerate.notebook_launcher`` from a
notebook or script, or directly when the processes were started by ``accelerate launch`` / ``torchrun``.

Each worker does the same thing on its shard of every batch:

    model = load (stage 1: tiny name + pretrained ViT/LLM, or a checkpoint) -> freeze for the stage -> method
    for step: loss = model(**batch).loss ; accelerator.backward(loss) ; optimizer.step()   (DDP all-reduces grads)
    every save_every steps: accelerator.save_state(...)   (model, optimizer, scheduler, RNG, data position)
    end: weights as safetensors + processor in output_dir/final ; held-out accuracy ; result.json

The last line a run prints (the CLI's) is that JSON.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path


from ..errors import LlavaNbError
from ..paths import CACHE_DIR
from .config import COMMON, FULL_HYPERPARAMS, TINY_HYPERPARAMS, TINY_LORA, TrainSpec
from .launch import default_num_processes, launch
from .loading import tiny_name


class TrainingError(RuntimeError):
    """A training process failed; the message carries each failed process's own error."""


def synthetic_data(model: str, seed: int = 0, n_images: int = 3000, n_test: int = 300) -> dict:
    """The synthetic data set for a tiny model (square images for v1/v1.5, several aspect ratios for v1.6),
    generated once into the cache."""
    from ..models.architectures import get_config
    from ..paths import build_once
    from ..data.synthetic import generate

    sizes = "anyres" if get_config(model).model_type == "llava_next" else "square"
    folder = build_once(CACHE_DIR / "synthetic" / f"{sizes}-{n_images}-{n_test}-seed{seed}", "test.json",
                        lambda tmp: generate(tmp, n_images=n_images, n_test=n_test, seed=seed, sizes=sizes))
    return {"captions": folder / "captions.json", "instruct": folder / "instruct.json", "test": folder / "test.json",
            "image_folder": folder / "images"}


def default_output_dir(model: str, stage: int, method: str, seed: int) -> Path:
    slug = str(model).strip("/").replace("/", "--")
    if Path(model).is_dir():
        slug = Path(model).resolve().parent.name + "--" + Path(model).name
    return CACHE_DIR / "runs" / f"{slug}-stage{stage}-{method}-seed{seed}"


def train(model, stage, method: str = "ddp", data=None, image_folder=None, output_dir=None, seed: int = 0,
          **hyperparams) -> dict:
    """Train a LLaVA model for one of LLaVA's stages and return the run's results.

    ``model``: a tiny name (starts from the pretrained tiny ViT and LLM), a checkpoint folder (e.g. a stage-1
    output) or a Hugging Face id. ``stage``: 1 (projector only) or 2 (projector + LLM). ``data``/``image_folder``:
    a LLaVA-format JSON and its images; default, for tiny models, the synthetic set. Asked for stage 2 of a tiny
    name, ``train`` first runs (or reuses) stage 1. Hyperparameters default to the tiny recipe for tiny models
    and to LLaVA-1.5's recipe otherwise; any of them can be overridden (see ``TINY_HYPERPARAMS`` and ``COMMON``).

    Returns ``result.json``'s content: ``train_loss``, ``losses``, ``eval_accuracy`` (when there is held-out data),
    ``seconds``, ``final_dir`` and more.
    """
    from ..methods.registry import get_method

    if stage not in (1, 2, "1", "2"):
        raise LlavaNbError(f"stage must be 1 or 2, got {stage!r}")
    stage = int(stage)
    adapter = get_method(method).adapter  # fails before any work on an unknown method
    if adapter and stage == 1:
        raise LlavaNbError(f"method {method!r} adds adapters to the LLM, which stage 1 does not train (it trains the "
                           "projector alone): use it for stage 2, or method='ddp' for stage 1")
    model = str(model)
    tiny = tiny_name(model)
    eval_data = hyperparams.pop("eval_data", None)
    unknown = set(hyperparams) - set(COMMON) - set(TINY_HYPERPARAMS[1])
    if unknown:
        raise LlavaNbError(f"unknown hyperparameter(s) {sorted(unknown)}; known: "
                           f"{sorted(set(COMMON) | set(TINY_HYPERPARAMS[1]))}")
    lora = TINY_LORA if tiny and stage == 2 and adapter else {}
    hp = {**COMMON, **(TINY_HYPERPARAMS if tiny else FULL_HYPERPARAMS)[stage], **lora, **hyperparams}
    if data is None:
        if not tiny:
            raise LlavaNbError(f"{model} needs data=... and image_folder=... (LLaVA-format JSON and its images); "
                               "only tiny models have built-in synthetic data")
        syn = synthetic_data(tiny, seed, hp["n_images"], hp["n_test"])
        data = syn["captions" if stage == 1 else "instruct"]
        image_folder, eval_data = syn["image_folder"], syn["test"] if stage == 2 else None
    start = time.perf_counter()
    if tiny:
        from .pretrain import ensure_pretrained_parts

        ensure_pretrained_parts()
    prior = None
    if stage == 2 and tiny and not Path(model).is_dir():
        # stage 1 trains the projector alone: adapters have nothing to do there (LLaVA's LoRA runs start from the
        # same stage-1 projector as full fine-tuning)
        prior_method = "ddp" if adapter else method
        prior = train(model, 1, method=prior_method, seed=seed, **{k: v for k, v in hyperparams.items()
                                                                   if k in ("num_processes", "n_images", "n_test", "force")})
        model = prior["final_dir"]
    out = Path(output_dir) if output_dir else default_output_dir(model, stage, method, seed)
    spec = TrainSpec(model, stage, method, str(data), str(image_folder) if image_folder else None,
                     str(eval_data) if eval_data else None, str(out), seed, hp)
    fingerprint = {k: v for k, v in asdict(spec).items() if k != "hp"}
    fingerprint["hp"] = {k: v for k, v in hp.items() if k not in ("force", "num_processes", "log_every")}
    cached = out / "result.json"
    if not hp["force"] and hp["resume_from"] is None and cached.exists():
        previous = json.loads(cached.read_text())
        if previous.get("spec") == json.loads(json.dumps(fingerprint)) and previous.get("finished"):
            previous["cached"] = True  # the same run finished before: reuse it (force=True retrains)
            return previous
    for stale in [cached, *out.glob("error-rank*.txt")] if hp["resume_from"] is None else out.glob("error-rank*.txt"):
        if stale.exists():
            stale.unlink()
    if hp["resume_from"] is None and (out / "checkpoints").is_dir():
        # a fresh run: an earlier run's checkpoints in this folder would be overwritten one by one (DCP warns) or,
        # worse, outlive this run and be mistaken for its own
        shutil.rmtree(out / "checkpoints")
    hp["_fingerprint"] = fingerprint
    try:
        launch(spec, hp["num_processes"] or default_num_processes())
    except Exception as err:
        causes = sorted(out.glob("error-rank*.txt"))
        if not causes:
            raise
        detail = "\n".join(f"{c.stem.removeprefix('error-')}: {c.read_text()}" for c in causes)
        raise TrainingError(f"training failed in {len(causes)} process(es):\n{detail}") from err
    result_file = out / "result.json"
    if not result_file.exists():
        raise RuntimeError(f"training finished without writing {result_file}; see the processes' output above")
    result = json.loads(result_file.read_text())
    result["seconds_total"] = round(time.perf_counter() - start, 1)
    if prior:
        result["stage1"] = {k: prior.get(k) for k in ("train_loss", "seconds", "final_dir", "cached")}
    result_file.write_text(json.dumps(result, indent=1) + "\n")
    return result

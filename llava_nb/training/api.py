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

import dataclasses
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ..errors import LlavaNbError, TrainingError  # noqa: F401 (TrainingError re-exported: chapters import it here)
from ..models.local import resolve as resolve_checkpoint
from ..paths import CACHE_DIR
from .config import FULL_METHODS, TINY_METHOD, ConfigError, TrainConfig, TrainSpec
from .launch import check_gpus, cpu_has_fast_bf16, default_num_processes, in_distributed_launch, launch
from .loading import _model_config, tiny_name
from .output_dir import check_resume_settings, latest_checkpoint, prepare_output, run_lock
from .preflight import check_data, check_model
from .safe_resume import check_resume_folder
from .worker import TRACEBACK_MARK


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


def train(model, stage, method: str | None = None, data=None, image_folder=None, output_dir=None, seed: int = 0,
          adapter: str | None = None, config: TrainConfig | None = None, **settings) -> dict:
    """Train a LLaVA model for one of LLaVA's stages and return the run's results.

    ``model``: a tiny name (starts from the pretrained tiny ViT and LLM), a checkpoint folder (e.g. a stage-1
    output) or a Hugging Face id. ``stage``: 1 (projector only) or 2 (projector + LLM). ``method``: a name from
    ``llava_nb.methods`` ("ddp", "zero3", "fsdp", "lora", "zero3+lora", ...); default ``ddp`` for tiny models and
    LLaVA's own for real checkpoints (ZeRO-2 for stage 1, ZeRO-3 for stage 2); ``adapter`` composes one with an
    engine. On GPUs, a real checkpoint's micro-batch comes from a plan (``training.plan``): the largest the memory
    calculator fits, with the accumulation that keeps the global batch; the plan is printed and recorded. ``data``/``image_folder``: a LLaVA-format JSON and its images; default, for tiny models, the synthetic
    set. Asked for stage 2 of a tiny name, ``train`` first runs (or reuses) stage 1. Settings default to the tiny
    recipe for tiny models and to LLaVA-1.5's recipe otherwise (``TrainConfig.recipe``); ``config`` replaces the
    recipe, and any ``TrainConfig`` field can be given as a keyword.

    Returns ``result.json``'s content: ``train_loss``, ``losses``, ``eval_accuracy`` (when there is held-out data),
    ``seconds``, ``final_dir``, ``states`` (the dtypes the method kept) and more.
    """
    from ..methods.registry import get_method

    if stage not in (1, 2, "1", "2"):
        raise LlavaNbError(f"stage must be 1 or 2, got {stage!r}")
    stage = int(stage)
    model = resolve_checkpoint(str(model))  # a Hub id's folder in $LLAVA_NB_CHECKPOINTS where that is set
    check_model(model)  # a checkpoint folder's config, processor and tokenizer, before anything reads them
    tiny = tiny_name(model)
    if method is None:
        method = TINY_METHOD if tiny else FULL_METHODS[stage]
    chosen = get_method(method, adapter).for_stage(stage)  # fails before any work on an unknown method
    eval_data = settings.pop("eval_data", None)
    cfg = _config(config, settings, bool(tiny), stage, chosen)
    if cfg.resume_from is not None:
        check_resume_folder(cfg.resume_from)  # inspected, never unpickled, before any process starts
    processes = cfg.num_processes or default_num_processes()
    check_gpus(processes)
    plan = None if tiny else _plan(model, chosen, cfg, processes)
    if plan is not None and cfg.micro_batch is None and cfg.gradient_accumulation_steps is None:
        cfg = dataclasses.replace(cfg, micro_batch=plan.micro_batch)
    cfg.batch_split(processes)  # a batch that cannot be split fails here, before any process starts
    if data is None:
        data, image_folder, eval_data = _synthetic_for(model, tiny, stage, seed, cfg)
    check_data(model, stage, cfg, data, image_folder, eval_data)  # every sample fits max_length (before stage 1)
    start = time.perf_counter()
    if tiny:
        from .pretrain import ensure_pretrained_parts

        ensure_pretrained_parts()
    stage1 = _stage1(model, chosen, seed, settings) if stage == 2 and tiny and not Path(model).is_dir() else None
    if stage1:
        model = stage1["final_dir"]  # where stage 1 will leave it: every check below runs before it trains
    out = Path(output_dir) if output_dir else default_output_dir(model, stage, chosen.key, seed)
    spec = TrainSpec(model, stage, chosen.key, str(data), str(image_folder) if image_folder else None,
                     str(eval_data) if eval_data else None, str(out), seed, cfg)
    spec.fingerprint = _fingerprint(spec)
    fingerprint = json.loads(json.dumps(spec.fingerprint))  # as JSON has it (tuples become lists)
    if cfg.resume_from is not None:
        check_resume_settings(cfg.resume_from, fingerprint)  # before anything is written
    if cfg.resume_lr and cfg.resume_from is None and latest_checkpoint(out) is None:
        raise ConfigError(f"resume_lr={cfg.resume_lr!r} changes the learning rate of a resumed run, and there is no "
                          "checkpoint to resume from; give resume_from (--resume-from), or set lr for a new run")
    managed = output_dir is None  # the project's own cache folder
    lock = nullcontext() if in_distributed_launch() else run_lock(out, managed)
    with lock:  # one run per folder at a time (two notebooks asking for the same cached run take turns)
        previous, resume = prepare_output(out, fingerprint, cfg.force, cfg.resume_from, managed)
        if previous:
            return previous
        return _run(spec, cfg, resume, stage1, plan, processes, start)


def _run(spec: TrainSpec, cfg: TrainConfig, resume: str | None, stage1: dict | None, plan, processes: int,
         start: float) -> dict:
    """Stage 1 first where it is needed, then the workers; ``result.json`` with what ``train`` adds."""
    out = Path(spec.output_dir)
    prior = None
    if stage1:
        prior = train(**stage1["call"])
        assert prior["final_dir"] == spec.model, (prior["final_dir"], spec.model)
    if resume != cfg.resume_from:  # this run's own folder: it continues from its latest checkpoint
        check_resume_folder(resume)
        spec.config = dataclasses.replace(cfg, resume_from=resume)
    result = _launch_and_collect(spec, processes)
    if plan is not None:
        result["plan"] = plan.as_dict()
    result["seconds_total"] = round(time.perf_counter() - start, 1)
    if prior:
        result["stage1"] = {k: prior.get(k) for k in ("train_loss", "seconds", "final_dir", "cached")}
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _stage1(model: str, chosen, seed: int, settings: dict) -> dict:
    """The stage-1 run a tiny name's stage 2 starts from: ``call`` (``train``'s arguments) and its ``final_dir``.
    Stage 1 trains the projector alone, so adapters have nothing to do there (LLaVA's LoRA runs start from the same
    stage-1 projector as full fine-tuning)."""
    from ..methods.registry import get_method

    method = "ddp" if chosen.adapter.name != "none" else chosen.engine.name
    call = {"model": model, "stage": 1, "method": method, "seed": seed,
            **{k: v for k, v in settings.items() if k in ("num_processes", "n_images", "n_test", "force")}}
    key = get_method(method).for_stage(1).key
    return {"call": call, "final_dir": str(default_output_dir(model, 1, key, seed) / "final")}


def _synthetic_for(model: str, tiny: str | None, stage: int, seed: int, cfg: TrainConfig) -> tuple:
    """(data, image_folder, eval_data) of a tiny model's synthetic set for ``stage``; a real one needs the reader's."""
    if not tiny:
        raise LlavaNbError(f"{model} needs data=... and image_folder=... (LLaVA-format JSON and its images); "
                           "only tiny models have built-in synthetic data")
    syn = synthetic_data(tiny, seed, cfg.n_images, cfg.n_test)
    return syn["captions" if stage == 1 else "instruct"], syn["image_folder"], syn["test"] if stage == 2 else None


def _config(config: TrainConfig | None, settings: dict, tiny: bool, stage: int, method) -> TrainConfig:
    """``config`` with ``settings`` applied, or the recipe for this model, stage and method with them."""
    if config is None:
        cfg = TrainConfig.recipe(tiny, stage, method.adapter.name != "none", **settings)
        return _tiny_precision(cfg) if tiny and "mixed_precision" not in settings else cfg
    return dataclasses.replace(config, **settings)


_told_fp32 = False  # the line below is printed once per process


def _tiny_precision(cfg: TrainConfig) -> TrainConfig:
    """The tiny recipe's bf16 autocast, kept on GPUs and on CPUs with bf16 instructions; fp32 on other CPUs, where
    emulated bf16 makes a step several times slower than fp32 (``launch.cpu_has_fast_bf16``). Said, not silent."""
    global _told_fp32
    if cfg.mixed_precision != "bf16" or torch.cuda.is_available() or cpu_has_fast_bf16():
        return cfg
    if not _told_fp32:
        print("this CPU has no bf16 instructions (bf16 autocast would be emulated, several times slower than fp32): "
              "the tiny recipe trains in fp32 here; mixed_precision='bf16' asks for bf16 anyway", flush=True)
        _told_fp32 = True
    return dataclasses.replace(cfg, mixed_precision="no")


def _plan(model: str, method, cfg: TrainConfig, processes: int):
    """The plan for a real checkpoint on GPUs (``training.plan``), printed; None on a CPU without
    ``gpu_memory_gib``. Nothing fits: a ``PlanError`` naming what would, before any weights load."""
    from .launch import gpu_memory_gib, host_memory_gib
    from .plan import make_plan

    memory = cfg.gpu_memory_gib or gpu_memory_gib()
    if memory is None or method.stage != 2:
        return None
    plan = make_plan(_model_config(model), method.name, gpus=processes, gpu_memory_gib=memory,
                     global_batch=cfg.batch_size, seq_len=cfg.max_length,
                     grad_checkpointing=cfg.gradient_checkpointing, micro_batch=cfg.micro_batch,
                     host_memory_gib=host_memory_gib(), attention=cfg.attn_implementation or "sdpa")
    print(plan.summary(), flush=True)
    if not plan.fits:
        import warnings

        warnings.warn(f"micro-batch {plan.micro_batch} is predicted not to fit (peak {plan.peak_gib:.1f} GiB of "
                      f"{memory:g} GiB); the calculator's largest is {plan.largest_that_fits}", stacklevel=3)
    return plan


def _fingerprint(spec: TrainSpec) -> dict:
    """What identifies a run: everything but the settings that do not change what it computes."""
    return {**{k: v for k, v in spec.to_json().items() if k not in ("config", "fingerprint")},
            "config": {k: v for k, v in dataclasses.asdict(spec.config).items()
                       if k not in ("force", "num_processes", "log_every", "resume_from", "stop_after", "save_every",
                                    "save_total_limit")}}


def _interrupted(result_file: Path, started: float) -> dict | None:
    """The result this launch's workers wrote when a Ctrl-C or SIGTERM stopped them (``interrupt``), else None."""
    if not result_file.exists() or result_file.stat().st_mtime < started:
        return None
    result = json.loads(result_file.read_text())
    return result if result.get("interrupted") else None


def _launch_and_collect(spec: TrainSpec, processes: int) -> dict:
    """Run the workers; their result.json, or a ``TrainingError`` carrying each failed process's own error."""
    out = Path(spec.output_dir)
    started = time.time()
    try:
        launcher = launch(spec, processes)
    except (Exception, KeyboardInterrupt) as err:  # a launcher stopped by Ctrl-C raises (its workers stopped cleanly)
        stopped = _interrupted(out / "result.json", started)
        if stopped is not None:
            return stopped
        if isinstance(err, KeyboardInterrupt):
            raise
        causes = sorted(out.glob("error-rank*.txt"))
        if not causes:
            raise
        detail = "\n".join(f"{c.stem.removeprefix('error-')}: {c.read_text().split(TRACEBACK_MARK)[0]}"
                           for c in causes)
        raise TrainingError(f"training failed in {len(causes)} process(es):\n{detail}", causes) from err
    result_file = out / "result.json"
    if not result_file.exists() or result_file.stat().st_mtime < started:  # none, or an earlier attempt's
        raise RuntimeError(f"training finished without writing {result_file}; see the processes' output above")
    return {**json.loads(result_file.read_text()), "launcher": launcher}

"""The body of every training process: load, set up the method, loop over batches, save, evaluate.

    model = load (stage 1: tiny name + pretrained ViT/LLM, or a checkpoint) -> freeze for the stage -> method
    for step: loss = model(**batch).loss ; accelerator.backward(loss) ; optimizer.step()   (DDP all-reduces grads)
    every save_every steps: accelerator.save_state(...)   (model, optimizer, scheduler, RNG, data position)
    end: weights as safetensors + processor in output_dir/final ; held-out accuracy ; result.json
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import LlavaNbError
from .config import TrainSpec
from .loading import _model_config, default_template, load_for_training
from .batches import make_dataset, make_loader
from .optimizer import change_lr, make_optimizer


#: in ``error-rank<N>.txt``, what separates the error (which train() reports) from its traceback (kept there)
TRACEBACK_MARK = "\n\n--- traceback ---\n"


class Progress:
    """Position in the data and the losses so far; saved with ``accelerator.save_state`` (via
    ``register_for_checkpointing``) so that a resumed run continues exactly where it stopped."""

    def __init__(self):
        self.step, self.losses, self.lrs = 0, [], []  # lrs: the first group's lr at each optimizer step
        self.interrupted = False  # stopped by Ctrl-C or SIGTERM (``interrupt``); not saved: a resumed run is not

    def state_dict(self):
        return {"step": self.step, "losses": list(self.losses), "lrs": list(self.lrs)}

    def load_state_dict(self, state):
        self.step, self.losses, self.lrs = int(state["step"]), list(state["losses"]), list(state.get("lrs", []))


def run_worker(spec: TrainSpec) -> None:
    """The body every training process runs (see the module docstring). A failure is also written to
    ``output_dir/error-rank<N>.txt`` so that the launching process can report the root cause. The processes of a
    multi-process launch end together (``exits.settle``), so that the launcher never has to kill one."""
    from .exits import ranks, settle

    group = ranks()  # (rank, local world size), or None in a single process
    one_thread_if_forked()
    try:
        _run_worker(spec)
    except Exception as err:
        rank = os.environ.get("RANK", "0")
        Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(spec.output_dir) / f"error-rank{rank}.txt").write_text(
            f"{type(err).__name__}: {err}{TRACEBACK_MARK}{traceback.format_exc()}")
        if group:
            settle(spec.output_dir, *group, failed=True)  # exits here unless this rank reports the failure
        raise
    if group:
        settle(spec.output_dir, *group, failed=False)


def one_thread_if_forked() -> None:
    """One CPU thread for torch's operations in a process forked by ``notebook_launcher``.

    torch runs CPU operations on GNU OpenMP's threads. Once the parent (a notebook's kernel) has run one parallel
    operation, a forked child inherits OpenMP's record of a thread team whose threads were not copied: the child's
    first parallel operation (copying a weight, say) waits for them forever, or crashes (SIGSEGV), as chapters 07
    and 08 did with 16 cores. One thread never starts a team. torch's DataLoader workers do the same, and
    ``torchrun`` gives each of several processes ``OMP_NUM_THREADS=1``. A fresh process (``accelerate launch``, or
    one process training in its own) starts its own team and keeps its thread count."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:  # started by fork (or spawn) from a Python parent
        torch.set_num_threads(1)


def _run_worker(spec: TrainSpec) -> None:
    from accelerate.utils import set_seed

    from ..methods.registry import get_method
    from ..methods.setup import load_kwargs, setup_model
    from ..methods.stages import trainable_parameters

    cfg = spec.config
    method = get_method(spec.method).for_stage(spec.stage)
    start = time.perf_counter()
    if cfg.tf32 and torch.cuda.is_available():  # LLaVA's --tf32 True: TensorFloat-32 for fp32 matrix products
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    accelerator = _accelerator(spec, method)
    set_seed(spec.seed)
    model, tokenizer, image_processor = load_for_training(spec.model, spec.stage,
                                                          **load_kwargs(method, cfg.mixed_precision))
    model = setup_model(model, method, setup_options(cfg))
    attention = {"vision": model.config.vision_config._attn_implementation,
                 "language": model.config.text_config._attn_implementation}
    trainable = trainable_parameters(model)  # before any engine shards them
    quantized = sum(type(m).__module__.startswith("bitsandbytes") for m in model.modules())  # not peft's wrappers
    template = cfg.template or default_template(model.config, spec.stage)
    dataset = make_dataset(spec, model.config, tokenizer, image_processor, template)
    micro, accum = cfg.batch_split(accelerator.num_processes)
    loader = make_loader(dataset, micro, accelerator.num_processes, accum, cfg, spec.seed, tokenizer)
    total = cfg.max_steps or len(loader) // (accelerator.num_processes * accum) * cfg.epochs
    if total < 1:
        raise LlavaNbError(f"{len(dataset)} samples give no full batch of {cfg.batch_size}; lower batch_size")
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.mm_projector_lr,  # LLaVA's groups (.optimizer)
                               cfg.mm_vision_tower_lr)
    # The scheduler is stepped by hand once per optimizer step (not handed to prepare(), which would step it once
    # per process) and saved with the state through register_for_checkpointing.
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total), total)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # Read only now: FSDP2 replaces every parameter with a sharded copy, and a list taken before prepare() would
    # clip stale tensors while keeping them alive (at 7B, 25 GiB of fp32 weights on one GPU).
    params = [p for p in model.parameters() if p.requires_grad]
    progress = Progress()
    accelerator.register_for_checkpointing(scheduler, progress)
    if cfg.resume_from:
        from .safe_resume import check_resume_folder

        check_resume_folder(cfg.resume_from)  # again, as the folder is read: nothing in it may run code
        fresh = list(scheduler.base_lrs)
        accelerator.load_state(cfg.resume_from)
        note = change_lr(scheduler, fresh, cfg.lr, cfg.resume_lr) if cfg.resume_lr else None
        if note and accelerator.is_main_process:
            print(note, flush=True)
    from .interrupt import StopRequest

    # From the first step until the result is written: a Ctrl-C or SIGTERM only takes note. A launcher may pass the
    # terminal's signal on after the loop has stopped (torch 2.11's elastic agent did, on 2 CPU processes), and a
    # signal then must not break the checkpoint, the final save or result.json.
    with StopRequest() as stop:
        states, measured = _train_loop(accelerator, model, optimizer, scheduler, loader, progress, cfg, total,
                                       params, Path(spec.output_dir), stop)
        _finish_run(spec, cfg, method, accelerator, model, progress, states, measured, total, micro, accum, attention,
                    trainable, quantized, template, tokenizer, image_processor, start)


def _finish_run(spec, cfg, method, accelerator, model, progress, states, measured, total, micro, accum, attention,
                trainable, quantized, template, tokenizer, image_processor, start) -> None:
    """The run's result (``result.json``), then the final save and evaluation (``finish``)."""
    config = accelerator.unwrap_model(model).config
    if measured.get("device_name"):  # on GPUs: model FLOPs utilisation (models.flops)
        from ..models.flops import mfu

        measured["mfu"] = mfu(config, measured["tokens"], measured["tokens_squared"], measured["seconds"],
                              accelerator.num_processes, measured["device_name"],
                              frozen_base=method.adapter.name != "none" or spec.stage == 1,
                              lora_r=cfg.lora_r if method.adapter.name != "none" else 0)
    result = {"model": spec.model, "stage": spec.stage, "method": method.name, "template": template,
              "steps": progress.step, "total_steps": total, "finished": progress.step >= total,
              "interrupted": progress.interrupted,
              "losses": progress.losses, "lrs": progress.lrs,
              "train_loss": float(sum(progress.losses[-10:]) / max(1, len(progress.losses[-10:]))),
              "num_processes": accelerator.num_processes, "micro_batch": micro, "gradient_accumulation_steps": accum,
              "device": accelerator.device.type, "output_dir": spec.output_dir,
              "hyperparams": {k: v for k, v in asdict(cfg).items() if k != "resume_from"},
              "spec": spec.fingerprint, "engine": type(model).__name__,  # DeepSpeedEngine, DistributedDataParallel
              "attention": attention, "trainable_parameters": trainable, "states": states, "measured": measured,
              "quantized_linears": quantized,  # bitsandbytes layers in the trained model (QLoRA)
              "gradient_clipping": _clipping(accelerator, model, cfg),
              "deepspeed_config": accelerator.state.deepspeed_plugin.deepspeed_config if _deepspeed(accelerator)
              else None}  # as the engine got it (methods.deepspeed, then Accelerate's additions)
    from .finish import finish

    finish(accelerator, model, spec, method, result, tokenizer, image_processor, template, start)


def setup_options(cfg):
    """The ``SetupOptions`` of a ``TrainConfig`` (its fields of the same names)."""
    from ..methods.setup import SetupOptions

    return SetupOptions(**{f: getattr(cfg, f) for f in SetupOptions.__dataclass_fields__})


def _accelerator(spec: TrainSpec, method):
    """An ``Accelerator`` that runs ``method``'s engine on this machine."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from ..methods.deepspeed import llm_hidden_size
    from ..methods.fsdp import fsdp_block_classes
    from ..methods.wrap import accelerator_kwargs, force_fsdp_on_cpu

    cfg, world = spec.config, int(os.environ.get("WORLD_SIZE", 1))
    config = _model_config(spec.model)
    micro, accum = cfg.batch_split(world)
    kwargs = accelerator_kwargs(method, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=accum,
                                micro_batch=micro, world_size=world, hidden_size=llm_hidden_size(config),
                                block_classes=fsdp_block_classes(config) if method.engine.kind == "fsdp" else None,
                                find_unused_parameters=cfg.find_unused_parameters, max_grad_norm=cfg.max_grad_norm)
    # cpu=True would make Accelerate drop a DeepSpeed plugin silently (and run DDP): DeepSpeed methods get a gloo
    # process group from their kwargs instead
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available() and method.engine.kind != "deepspeed", mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=accum, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        **kwargs)
    if method.engine.kind == "fsdp" and not torch.cuda.is_available():
        force_fsdp_on_cpu(accelerator, kwargs["fsdp_plugin"])
    return accelerator


def _train_loop(accelerator, model, optimizer, scheduler, loader, progress, cfg, total: int, params,
                out: Path, stop) -> tuple[dict | None, dict]:
    """Optimizer steps until ``total`` (or ``stop_after``, or a Ctrl-C: ``interrupt``, which sets
    ``progress.interrupted``); returns the states' dtypes read at the first step and what the run measured
    (``meter.Meter``: memory per rank, tokens per second)."""
    from ..data.dataset import check_batch
    from ..methods.probe import StateProbe
    from .meter import Meter

    probe, meter = StateProbe(model, optimizer), Meter(accelerator.device)
    micro_done = progress.step * accelerator.gradient_accumulation_steps
    model.train()
    first, done = True, False
    while progress.step < total and not done:
        epoch, skip = divmod(micro_done, len(loader))
        loader.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            if first:
                check_batch(batch, accelerator.unwrap_model(model).config)
                first = False
            meter.batch(batch)
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                # keep the value, not the graph: a loss still referenced holds its graph's leaves (and their .grad)
                # through the next forward and into the steady reading
                loss = loss.detach()
                # DeepSpeed clips inside its step, at its config's gradient_clipping (max_grad_norm, set by
                # methods.deepspeed); Accelerate's clip_grad_norm_ only reads the engine's norm there
                if cfg.max_grad_norm and accelerator.sync_gradients and not _deepspeed(accelerator):
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_done += 1
            if not accelerator.sync_gradients:
                continue
            _after_step(accelerator, scheduler, progress, loss, cfg, total, out)
            meter.step_done()
            if stop.agreed(accelerator):  # Ctrl-C or SIGTERM: save this step, if the run saves, and end
                progress.interrupted = True
                if cfg.save_every and progress.step % cfg.save_every:
                    _save_checkpoint(accelerator, progress, cfg, out)
            done = progress.interrupted or progress.step >= total or bool(
                cfg.stop_after and progress.step >= cfg.stop_after)
            if done:
                break
    batch = loss = None  # the last micro-batch is no state the run keeps: out of the steady reading
    accelerator.wait_for_everyone()
    return probe.read(), meter.read(accelerator.num_processes)


def _deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _clipping(accelerator, model, cfg) -> float:
    """The gradient norm the run clipped at (0.0: none): a DeepSpeed engine's own setting, else ``max_grad_norm``."""
    if _deepspeed(accelerator):
        return float(model.gradient_clipping())
    return float(cfg.max_grad_norm or 0.0)


def _after_step(accelerator, scheduler, progress, loss, cfg, total: int, out: Path) -> None:
    progress.lrs.append(scheduler.get_last_lr()[0])  # the lr this step used
    scheduler.step()
    progress.step += 1
    progress.losses.append(accelerator.reduce(loss.detach(), "mean").item())
    if accelerator.is_main_process and cfg.log_every and progress.step % cfg.log_every == 0:
        print(f"step {progress.step}/{total} loss {progress.losses[-1]:.4f}", flush=True)
    if cfg.save_every and progress.step % cfg.save_every == 0:
        _save_checkpoint(accelerator, progress, cfg, out)


def _save_checkpoint(accelerator, progress, cfg, out: Path) -> None:
    """``out/checkpoints/step_N``: written as ``step_N.partial``, renamed once every process has written its part."""
    from .output_dir import finish_checkpoint

    partial = out / "checkpoints" / f"step_{progress.step}.partial"
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        finish_checkpoint(partial, cfg.save_total_limit)
    accelerator.wait_for_everyone()

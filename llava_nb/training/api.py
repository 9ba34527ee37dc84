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

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import LlavaNbError
from ..paths import REPO_ROOT

CACHE_DIR = Path(os.environ.get("LLAVA_NB_CACHE", REPO_ROOT / ".cache"))

#: The tiny models' recipe: LLaVA's shape (stage 1 projector only, stage 2 everything but the ViT), with learning
#: rates and sizes for ~1M-parameter models on a CPU. Stage 1's lr is 5x lower than LLaVA's 1e-3: at this size a
#: projector trained at 1e-3 to 2e-3 on captions drifts to large, nearly image-independent outputs, and stage 2
#: then learns markedly worse than from a lower-lr stage 1 (measured while building the book; see the notes).
#: Stage 2 comes from data/gpu/sweep_recipe.py (chapter 04): with the committed pretrained parts, lr 5e-4 with
#: weight decay 0.5 on the matrices, batches *not* grouped by length (which stalls "Is there a <colour> shape?"),
#: bf16 autocast (a cheaper step on CPUs with bf16 instructions) and eager attention: under bf16 autocast on a CPU,
#: PyTorch's SDPA runs its flash-attention kernel, whose backward pass at these tiny shapes costs more than the
#: matrix products (``bench step-time``; chapter 04), and eager attention makes a step ~1.7x faster. Real models on
#: GPUs keep the default (SDPA). 14 epochs, not 12: on seeds 0-4 they raised the mean held-out accuracy with eager
#: attention from 0.909 to 0.931. Over ten seeds the recipe averages just over 90% but misses it in some seeds:
#: "exists" stays a close call at this size.
TINY_HYPERPARAMS = {
    1: dict(lr=2e-4, epochs=1, batch_size=32, max_length=512, warmup_ratio=0.05),
    2: dict(lr=5e-4, epochs=14, batch_size=32, max_length=512, warmup_ratio=0.05, weight_decay=0.5,
            mixed_precision="bf16", attn_implementation="eager"),
}
#: LoRA on the tiny models: LLaVA's rank-to-width ratio would leave r = 4 at width 128, so r = 16 with LLaVA's
#: alpha = 2 r; and, as LLaVA's LoRA recipe (2e-4) against its full fine-tuning (2e-5), a higher learning rate.
#: LoRA and QLoRA keep the shorter schedule they were built with (6 epochs in fp32, no weight decay), which keeps
#: their chapters' first runs short; the LoRA and QLoRA chapters show the epochs when they compare the two. In
#: fp32 SDPA is the faster attention on a CPU (``bench step-time``), so they keep the default.
TINY_LORA = dict(lr=2e-3, epochs=6, weight_decay=0.0, mixed_precision="no", attn_implementation=None, lora_r=16,
                 lora_alpha=32)
#: LLaVA-1.5's recipe (scripts/v1_5/pretrain.sh, finetune.sh), for real checkpoints. finetune.sh's
#: --group_by_modality_length groups samples by length (and image/text-only); ``group_by_length`` does the first.
FULL_HYPERPARAMS = {
    1: dict(lr=1e-3, epochs=1, batch_size=256, max_length=2048, warmup_ratio=0.03),
    2: dict(lr=2e-5, epochs=1, batch_size=128, max_length=2048, warmup_ratio=0.03, group_by_length=True),
}
COMMON = dict(weight_decay=0.0, gradient_accumulation_steps=1, mixed_precision="no", save_every=0, log_every=5,
              max_steps=None, stop_after=None, resume_from=None, template=None, num_processes=None,
              find_unused_parameters=False, unfreeze_vision=False, eval_max=300, n_images=3000, n_test=300,
              gradient_checkpointing=False, group_by_length=False, force=False,
              lora_r=128, lora_alpha=256, lora_dropout=0.05,  # LoRA: LLaVA's finetune_lora.sh
              max_grad_norm=None, attn_implementation=None)  # None: the model's own attention


class TrainingError(RuntimeError):
    """A training process failed; the message carries each failed process's own error."""


@dataclass
class TrainSpec:
    """Everything a worker process needs (picklable, so it crosses ``notebook_launcher``)."""

    model: str
    stage: int
    method: str
    data: str | None
    image_folder: str | None
    eval_data: str | None
    output_dir: str
    seed: int
    hp: dict = field(default_factory=dict)


def tiny_name(model: str) -> str | None:
    """The tiny model a name or checkpoint folder is (from ``llava_nb_name`` in its config.json), else None."""
    from ..models.architectures import resolve_name

    config = Path(model) / "config.json"
    if config.is_file():
        name = json.loads(config.read_text()).get("llava_nb_name") or ""
    else:
        try:
            name = resolve_name(model)
        except LlavaNbError:
            return None
    return name if name.startswith("tiny-") else None


def default_template(config, stage: int) -> str:
    if stage == 1:
        return "plain"
    name = getattr(config, "llava_nb_name", "") or ""
    if config.model_type == "llava_next" and (config.text_config.model_type == "mistral" or name == "tiny-llava-v1.6"):
        return "mistral_instruct"
    return "vicuna_v1"


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


def load_for_training(model: str, stage: int, **load_kwargs):
    """(model, tokenizer, image_processor) for a tiny name (pretrained parts, random projector), a checkpoint
    folder, or a Hub id; ``load_kwargs`` go to ``from_pretrained`` (QLoRA's quantization config)."""
    from ..models.architectures import build_model, load_model
    from .pretrain import load_pretrained_parts
    from ..models.processors import build_image_processor, load_processor
    from ..models.tokenizer import load_tokenizer

    if tiny_name(model) and not Path(model).is_dir():
        if load_kwargs:
            raise LlavaNbError(f"{model} is built, not loaded: a quantized (QLoRA) run needs a checkpoint folder, "
                               "e.g. a stage-1 run's final_dir (train(..., stage=2) of a tiny name does that)")
        with _whole_model_construction():
            net = build_model(model)
            load_pretrained_parts(net)
        return net, load_tokenizer(), build_image_processor(net.config)
    net = load_model(model, **load_kwargs)
    folder = Path(model)
    if folder.is_dir() and not any((folder / f).exists() for f in ("processor_config.json", "preprocessor_config.json")):
        return net, load_tokenizer(), build_image_processor(net.config)
    processor = load_processor(model)
    return net, processor.tokenizer, processor.image_processor


@contextlib.contextmanager
def _whole_model_construction():
    """Build (or run) a model whole even while an Accelerate/DeepSpeed ZeRO-3 config is active.

    Workaround for transformers 5.24: with a ZeRO-3 config registered, ``Model(config)`` runs under
    ``deepspeed.zero.Init``, and ``_init_weights`` then zeroes the embedding's ``padding_idx`` row of an already
    partitioned, empty weight: ``IndexError: index 3 is out of bounds for dimension 0 with size 0``. A tiny model
    is small, so it is built whole and ``deepspeed.initialize`` partitions it afterwards (``from_pretrained`` of a
    checkpoint folder keeps ``zero.Init``, which loads correctly). Restores the config afterwards.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


class Progress:
    """Position in the data and the losses so far; saved with ``accelerator.save_state`` (via
    ``register_for_checkpointing``) so that a resumed run continues exactly where it stopped."""

    def __init__(self):
        self.step, self.losses = 0, []

    def state_dict(self):
        return {"step": self.step, "losses": list(self.losses)}

    def load_state_dict(self, state):
        self.step, self.losses = int(state["step"]), list(state["losses"])


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: biases and norm weights (1-D) are not decayed, the Hugging Face
    Trainer's rule and so LLaVA's. Decay pulls every weight towards zero by ``lr * weight_decay`` of itself a step;
    on a norm's gain, whose neutral value is 1, that would be a bias rather than a regulariser."""
    params = list(params)
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def run_worker(spec: TrainSpec) -> None:
    """The body every training process runs (see the module docstring). A failure is also written to
    ``output_dir/error-rank<N>.txt`` so that the launching process can report the root cause."""
    try:
        _run_worker(spec)
    except Exception as err:
        rank = os.environ.get("RANK", "0")
        Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(spec.output_dir) / f"error-rank{rank}.txt").write_text(f"{type(err).__name__}: {err}")
        raise


def _run_worker(spec: TrainSpec) -> None:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from transformers import get_cosine_schedule_with_warmup

    from ..data.records import load_conversations
    from ..data.dataset import Collator, ConversationDataset, LengthGroupedSampler, check_batch
    from ..methods.registry import force_fsdp_on_cpu, get_method
    from ..methods.recipes import fsdp_block_classes, llm_hidden_size
    from ..models.processors import build_processor
    from ..methods.stages import freeze_for_stage

    hp = spec.hp
    method = get_method(spec.method)
    start = time.perf_counter()
    if not torch.cuda.is_available() and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # a forked process keeps its parent's count
    world = int(os.environ.get("WORLD_SIZE", 1))
    config = _model_config(spec.model)
    facts = {"hidden_size": llm_hidden_size(config), "world_size": world,
             "micro_batch": hp["batch_size"] // (world * hp["gradient_accumulation_steps"]),
             "block_classes": fsdp_block_classes(config) if method.engine == "fsdp" else None}
    accelerator_kwargs = method.accelerator_kwargs(hp, facts)
    # cpu=True would make Accelerate drop a DeepSpeed plugin silently (and run DDP): DeepSpeed methods get a gloo
    # process group from their kwargs instead
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available() and method.engine != "deepspeed", mixed_precision=hp["mixed_precision"],
        gradient_accumulation_steps=hp["gradient_accumulation_steps"],
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True), **accelerator_kwargs)
    if method.engine == "fsdp" and not torch.cuda.is_available():
        force_fsdp_on_cpu(accelerator, accelerator_kwargs["fsdp_plugin"])
    set_seed(spec.seed)
    out = Path(spec.output_dir)
    model, tokenizer, image_processor = load_for_training(spec.model, spec.stage, **method.load_kwargs())
    if hp["attn_implementation"]:  # "eager", "sdpa", ...: for the ViT and the LLM alike
        model.set_attn_implementation(hp["attn_implementation"])
    attention = {"vision": model.config.vision_config._attn_implementation,
                 "language": model.config.text_config._attn_implementation}
    if method.adapter:  # peft decides what trains (adapters, the projector); 4-bit weights cannot require grads
        model.requires_grad_(False)
    else:
        freeze_for_stage(model, f"stage{spec.stage}")
    if hp["unfreeze_vision"]:  # what LLaVA-NeXT's recipes do; also the DDP unused-parameter trap
        model.model.vision_tower.requires_grad_(True)
    if hp["gradient_checkpointing"]:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model = method.prepare_model(model, hp)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # before any engine shards them
    quantized = sum(type(m).__module__.startswith("bitsandbytes") for m in model.modules())  # not peft's wrappers
    template = hp["template"] or default_template(model.config, spec.stage)
    records = load_conversations(spec.data, spec.image_folder)
    dataset = ConversationDataset(records, tokenizer, model.config, template, hp["max_length"], image_processor)
    world = accelerator.num_processes
    micro = hp["batch_size"] // (world * hp["gradient_accumulation_steps"])
    if micro < 1 or micro * world * hp["gradient_accumulation_steps"] != hp["batch_size"]:
        raise LlavaNbError(f"batch_size={hp['batch_size']} must be a multiple of processes x accumulation steps = "
                           f"{world} x {hp['gradient_accumulation_steps']}")
    if hp["group_by_length"]:  # LLaVA's group_by_modality_length: batches of similar length, less padding
        sampler = LengthGroupedSampler([len(it.input_ids) for it in dataset.items], micro * world, seed=spec.seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=micro, sampler=sampler, drop_last=True,
                                             collate_fn=Collator(tokenizer.pad_token_id))
    else:
        generator = torch.Generator().manual_seed(spec.seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=micro, shuffle=True, drop_last=True,
                                             generator=generator, collate_fn=Collator(tokenizer.pad_token_id))
    steps_per_epoch = len(loader) // (world * hp["gradient_accumulation_steps"])
    total = hp["max_steps"] or steps_per_epoch * hp["epochs"]
    if total < 1:
        raise LlavaNbError(f"{len(dataset)} samples give no full batch of {hp['batch_size']}; lower batch_size")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, hp["lr"], hp["weight_decay"])
    # The scheduler is stepped by hand once per optimizer step (not handed to prepare(), which would step it once
    # per process) and saved with the state through register_for_checkpointing.
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(hp["warmup_ratio"] * total), total)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    progress = Progress()
    accelerator.register_for_checkpointing(scheduler, progress)
    if hp["resume_from"]:
        accelerator.load_state(hp["resume_from"])
    micro_done = progress.step * hp["gradient_accumulation_steps"]
    model.train()
    first = True
    while progress.step < total:
        epoch, skip = divmod(micro_done, len(loader))
        loader.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch in epoch_loader:
            if first:
                check_batch(batch, accelerator.unwrap_model(model).config)
                first = False
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if hp["max_grad_norm"] and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, hp["max_grad_norm"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_done += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            progress.step += 1
            progress.losses.append(accelerator.reduce(loss.detach(), "mean").item())
            if accelerator.is_main_process and hp["log_every"] and progress.step % hp["log_every"] == 0:
                print(f"step {progress.step}/{total} loss {progress.losses[-1]:.4f}", flush=True)
            if hp["save_every"] and progress.step % hp["save_every"] == 0:
                accelerator.save_state(str(out / "checkpoints" / f"step_{progress.step}"))
            if progress.step >= total or (hp["stop_after"] and progress.step >= hp["stop_after"]):
                break
        if hp["stop_after"] and progress.step >= hp["stop_after"]:
            break
    accelerator.wait_for_everyone()
    finished = progress.step >= total
    result = {"model": spec.model, "stage": spec.stage, "method": spec.method, "template": template,
              "steps": progress.step, "total_steps": total, "finished": finished, "losses": progress.losses,
              "train_loss": float(sum(progress.losses[-10:]) / max(1, len(progress.losses[-10:]))),
              "num_processes": world, "device": accelerator.device.type, "output_dir": str(out),
              "hyperparams": {k: v for k, v in hp.items() if k not in ("resume_from", "_fingerprint")},
              "spec": hp.get("_fingerprint")}
    result["engine"] = type(model).__name__  # DeepSpeedEngine, DistributedDataParallel, ...
    result["attention"] = attention  # the attention kernels the run used
    result["trainable_parameters"] = trainable
    result["quantized_linears"] = quantized  # bitsandbytes layers in the trained model (QLoRA)
    # every process takes part: under ZeRO-3 and FSDP this gathers the sharded weights (whole on rank 0)
    state = accelerator.get_state_dict(model) if finished else None
    if accelerator.is_main_process:
        final = out / "final"
        if finished:
            unwrapped = accelerator.unwrap_model(model)
            if method.engine == "fsdp":  # FSDP2 swapped the class for FSDP<name>: save a plain copy
                unwrapped = _plain_model(unwrapped.config, state)
            if method.adapter:  # the adapter with its projector, then the merged weights as an ordinary model
                from ..methods.lora import save_lora

                save_lora(unwrapped, out / "adapter")
                result["adapter_dir"] = str(out / "adapter")
                if method.load_kwargs():  # a quantized base: merge into the full-precision base, as one deploys it
                    from ..models.architectures import load_model
                    from ..methods.lora import load_lora

                    unwrapped = load_lora(load_model(spec.model), out / "adapter", merge=True)
                else:
                    unwrapped = unwrapped.merge_and_unload()
                state = None
            unwrapped.save_pretrained(final, state_dict=state, safe_serialization=True)
            build_processor(unwrapped.config, tokenizer, image_processor=image_processor).save_pretrained(final)
            result["final_dir"] = str(final)
            if spec.eval_data:
                from ..models.architectures import load_model
                from .evaluate import evaluate

                # Evaluation runs on this process alone. Under DeepSpeed the engine's copy may be sharded (ZeRO-3)
                # or bf16, so the saved model is loaded whole; and with a ZeRO-3 config registered, transformers'
                # generate() would wait for the other ranks (synced_gpus) and hang: the config is set aside.
                # Under FSDP the live model is sharded too (and the plain copy above has no buffers): the same.
                with _whole_model_construction() if method.engine == "deepspeed" else contextlib.nullcontext():
                    if method.engine in ("deepspeed", "fsdp"):
                        unwrapped = load_model(final).to(accelerator.device)
                    test = load_conversations(spec.eval_data, spec.image_folder)[: hp["eval_max"]]
                    test_set = ConversationDataset(test, tokenizer, unwrapped.config, template, hp["max_length"],
                                                   image_processor)
                    metrics = evaluate(unwrapped, test_set)
                    test_set.blank_images = True  # the same questions with every image replaced by a blank one
                    blank = evaluate(unwrapped, test_set)
                result.update(eval_accuracy=metrics["accuracy"], eval_by_type=metrics["by_type"],
                              eval_examples=metrics["examples"], eval_blank_accuracy=blank["accuracy"],
                              eval_blank_by_type=blank["by_type"])
        result["seconds"] = round(time.perf_counter() - start, 1)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _plain_model(config, state: dict):
    """A model of ``config``'s own class holding ``state`` (a full state dict), for ``save_pretrained``. Built on
    meta, so nothing is allocated or copied; its non-persistent buffers (RoPE's ``inv_freq``) stay on meta, so it
    is for saving only."""
    from ..models.architectures import model_class

    with torch.device("meta"):
        plain = model_class(config)(config)
    plain.load_state_dict(state, assign=True)
    return plain.eval()


def _model_config(model: str):
    """The config of a tiny name, checkpoint folder or Hub id (DeepSpeed's bucket sizes and FSDP's blocks follow it)."""
    from ..models.architectures import get_config

    if tiny_name(model) and not Path(model).is_dir():
        return get_config(tiny_name(model))
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model)


def _in_distributed_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def default_num_processes() -> int:
    """Every GPU where there are GPUs (without initialising CUDA in this process), else 2 CPU processes."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def _launch_fresh_processes(spec: TrainSpec, num_processes: int) -> None:
    """Start the workers as fresh processes through ``accelerate launch`` (``python -m llava_nb worker SPEC``)."""
    import subprocess
    import sys

    spec_file = Path(spec.output_dir) / "spec.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(asdict(spec)))
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                    str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(free_port()), "-m", "llava_nb", "worker", str(spec_file)], check=True)


def free_port() -> int:
    """A TCP port nobody listens on now. Every launch gets its own: two runs on one machine on the same port
    (29500, the default) collide, and DeepSpeed's CPU shared-memory all-reduce, whose segment names contain the
    port, then crashes one of them (SIGABRT, "terminate called without an active exception")."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(spec: TrainSpec, num_processes: int) -> None:
    """Run ``run_worker(spec)`` in ``num_processes`` processes (or in this one).

    ``notebook_launcher`` forks, which CUDA forbids once this process has initialised it (a notebook that already
    ran a model on the GPU, say); then the workers start as fresh processes through ``accelerate launch``.
    """
    from accelerate.state import AcceleratorState

    if _in_distributed_launch():
        run_worker(spec)
        return
    if num_processes == 1:
        try:
            run_worker(spec)
        finally:  # forget this process's Accelerator, so that a later notebook_launcher can start processes
            AcceleratorState._reset_state(reset_partial_state=True)
        return
    from ..methods.registry import get_method

    deepspeed_on_gpu = torch.cuda.is_available() and get_method(spec.method).engine == "deepspeed"
    if (torch.cuda.is_available() and torch.cuda.is_initialized()) or AcceleratorState._shared_state \
            or "bitsandbytes" in sys.modules or deepspeed_on_gpu:
        # fork is impossible after CUDA initialised; notebook_launcher refuses once an Accelerator exists in this
        # process, and once bitsandbytes is imported (peft and transformers import it when it is installed).
        # DeepSpeed on GPUs: forked workers failed in init_process_group with "CUDA error: initialization error"
        # (2 x H200, 2026-11-28; data/gpu/engines_gpu.py), so they start fresh.
        _launch_fresh_processes(spec, num_processes)
        return
    from accelerate import notebook_launcher

    if not torch.cuda.is_available():
        # Share the cores between the CPU processes. Accelerate would set 1 thread and warn (on stderr, which the
        # book build treats as an error) when OMP_NUM_THREADS is unset.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // num_processes)))
    # torch's elastic launcher logs a failed process's whole traceback to stderr; train() re-raises the failure
    # as a TrainingError that carries each process's own error, so that log is redundant here.
    import logging

    elastic = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    level = elastic.level
    elastic.setLevel(logging.CRITICAL)
    try:
        notebook_launcher(run_worker, (spec,), num_processes=num_processes, use_port=str(free_port()))
    except Exception:
        errors = list(Path(spec.output_dir).glob("error-rank*.txt"))
        if not any(msg in e.read_text() for e in errors
                   for msg in ("Cannot re-initialize CUDA in forked subprocess", "CUDA error: initialization error")):
            raise
        # CUDA was initialised in this process by something torch.cuda.is_initialized() does not see (it happens
        # after an earlier notebook_launcher run on some machines): fork cannot work, fresh processes can.
        for e in errors:
            e.unlink()
        print("notebook_launcher could not fork after CUDA was initialised; starting fresh processes instead")
        _launch_fresh_processes(spec, num_processes)
    finally:
        elastic.setLevel(level)


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


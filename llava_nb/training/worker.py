"""The body of every training process: load, set up the method, loop over batches, save, evaluate.

    model = load (stage 1: tiny name + pretrained ViT/LLM, or a checkpoint) -> freeze for the stage -> method
    for step: loss = model(**batch).loss ; accelerator.backward(loss) ; optimizer.step()   (DDP all-reduces grads)
    every save_every steps: accelerator.save_state(...)   (model, optimizer, scheduler, RNG, data position)
    end: weights as safetensors + processor in output_dir/final ; held-out accuracy ; result.json
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch

from ..errors import LlavaNbError
from .config import TrainSpec
from .loading import _model_config, _plain_model, _whole_model_construction, default_template, load_for_training

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

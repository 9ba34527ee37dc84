"""The end of a run, on every process: gather the weights, save them (safetensors, with the processor), save the
adapter and the merged model for LoRA methods, evaluate on held-out data, and write ``result.json``."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from .loading import _plain_model, _whole_model_construction


def finish(accelerator, model, spec, method, result: dict, tokenizer, image_processor, template: str,
           start: float) -> None:
    """Save and evaluate (rank 0) what ``model`` learned, then write ``result.json``. Every process takes part in
    the gathering: under ZeRO-3 and FSDP the full state dict is assembled from the shards (whole on rank 0)."""
    out = Path(spec.output_dir)
    state = accelerator.get_state_dict(model) if result["finished"] else None
    if accelerator.is_main_process:
        if result["finished"]:
            saved = _save(accelerator.unwrap_model(model), state, spec, method, result, tokenizer, image_processor)
            if spec.eval_data:
                result.update(_evaluate(saved, accelerator.device, spec, method, tokenizer, image_processor,
                                        template))
        result["seconds"] = round(time.perf_counter() - start, 1)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _save(unwrapped, state: dict, spec, method, result: dict, tokenizer, image_processor):
    """``output_dir/final``: an ordinary transformers checkpoint (adapters merged), and ``output_dir/adapter``.
    Returns the model it saved, whole (DDP: the live one, adapters merged), or None where it was assembled from
    shards."""
    from ..models.processors import build_processor

    out = Path(spec.output_dir)
    final = out / "final"
    if method.adapter.name != "none":
        from ..methods.lora import save_lora

        save_lora(unwrapped, out / "adapter", state_dict=state)  # the gathered state: shards hold only a part
        result["adapter_dir"] = str(out / "adapter")
        if method.adapter.quantized or method.engine.kind != "ddp":
            # merge into a fresh full-precision base: a 4-bit base is merged as one deploys it, and a sharded
            # engine's live model holds only this rank's part
            from ..methods.lora import load_lora
            from ..models.architectures import load_model

            with _whole_model_construction():
                unwrapped = load_lora(load_model(spec.model), out / "adapter", merge=True)
        else:
            unwrapped = unwrapped.merge_and_unload()
        state = None
    elif method.engine.kind == "fsdp":  # FSDP2 swapped the class for FSDP<name>: save a plain copy
        unwrapped = _plain_model(unwrapped.config, state)
    unwrapped.save_pretrained(final, state_dict=state, safe_serialization=True)
    build_processor(unwrapped.config, tokenizer, image_processor=image_processor).save_pretrained(final)
    result["final_dir"] = str(final)
    return unwrapped if method.engine.kind == "ddp" else None


def _evaluate(model, device, spec, method, tokenizer, image_processor, template: str) -> dict:
    """Exact-match accuracy on the held-out questions, and on the same questions with blank images.

    Evaluation runs on this process alone: on ``model`` (DDP's live model), or on the saved one (``model`` None)
    where the live model is sharded. Under DeepSpeed the engine's copy may be sharded (ZeRO-3) or bf16, and with a
    ZeRO-3 config registered, transformers' generate() would wait for the other ranks (synced_gpus) and hang, so
    the config is set aside. Under FSDP the live model is sharded too. A reloaded model gets the attention kernel
    the run trained with.
    """
    from ..data.dataset import ConversationDataset
    from ..data.records import load_conversations
    from ..models.architectures import load_model
    from .evaluate import evaluate

    sharded = method.engine.kind == "deepspeed"
    # bf16 runs evaluate under the autocast they trained under: a LoRA model merged in place holds a bf16 base and
    # an fp32 projector (every trained parameter keeps fp32 weights), which a plain forward cannot multiply together
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.config.mixed_precision == "bf16")
    with _whole_model_construction() if sharded else contextlib.nullcontext(), bf16:
        if model is None:
            model = load_model(Path(spec.output_dir) / "final").to(device)
            if spec.config.attn_implementation:
                model.set_attn_implementation(spec.config.attn_implementation)
        test = load_conversations(spec.eval_data, spec.image_folder,
                                  images_outside=spec.config.images_outside_folder)[: spec.config.eval_max]
        test_set = ConversationDataset(test, tokenizer, model.config, template, spec.config.max_length,
                                       image_processor)
        metrics = evaluate(model, test_set)
        test_set.blank_images = True  # the same questions with every image replaced by a blank one
        blank = evaluate(model, test_set)
    return dict(eval_accuracy=metrics["accuracy"], eval_by_type=metrics["by_type"], eval_examples=metrics["examples"],
                eval_blank_accuracy=blank["accuracy"], eval_blank_by_type=blank["by_type"])

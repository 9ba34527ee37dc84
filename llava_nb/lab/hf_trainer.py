"""The other way into DeepSpeed: the Hugging Face ``Trainer`` with ``TrainingArguments(deepspeed="zero3.json")``, as
LLaVA's own ``train.py`` does.

The Trainer reads LLaVA's JSON file, fills every ``"auto"`` from its own arguments (micro-batch, accumulation, bf16,
bucket sizes from the model's hidden size), and hands Accelerate a ``DeepSpeedPlugin``. Run it under a launcher, one
process per GPU (or per CPU "rank")::

    torchrun --standalone --nproc-per-node 2 -m llava_nb.lab.hf_trainer --config zero3 --out runs/hf-zero3

On a CPU the process group must be gloo, and the Trainer does not set one up for DeepSpeed there (see
``_deepspeed_state_on_cpu``); nor may it be told ``use_cpu=True``, which makes Accelerate drop DeepSpeed and run
plain DDP without a word. Each rank writes what it saw to
``out/rank<N>.json``: the engine class, the resolved DeepSpeed config and the norm the engine clips gradients at, the
losses, and its ZeRO-3 shard sizes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def run(config: str, out_dir: str, max_steps: int = 4, micro_batch: int = 4, lr: float = 2e-4, seed: int = 0,
        n_images: int = 64) -> dict:
    """Stage 1 of the tiny LLaVA-1.5 through ``Trainer`` with LLaVA's ``config`` (``zero2``, ``zero3``); this rank's
    record (also written to ``out_dir/rank<N>.json``)."""
    from transformers import Trainer, TrainingArguments

    from ..data.records import load_conversations
    from ..data.dataset import Collator, ConversationDataset
    from ..methods.deepspeed import llava_deepspeed_path
    from ..methods.stages import freeze_for_stage
    from ..data.synthetic import generate
    from ..training.loading import load_for_training

    rank = int(os.environ.get("RANK", 0))
    out = Path(out_dir)
    extra = {}
    if not torch.cuda.is_available():
        extra["accelerator_config"] = {"use_configured_state": True}
        _deepspeed_state_on_cpu()
    args = TrainingArguments(
        output_dir=str(out), deepspeed=str(llava_deepspeed_path(config)), per_device_train_batch_size=micro_batch,
        max_steps=max_steps, learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0.03, weight_decay=0.0,
        logging_steps=1, save_strategy="no", report_to=[], seed=seed, dataloader_num_workers=0,
        disable_tqdm=True, **extra)
    args.world_size  # noqa: B018 - reading it sets the process group up before the barrier below
    data = out / "data"
    if rank == 0 and not (data / "captions.json").exists():
        generate(data, n_images=n_images, n_test=1, seed=seed)
    torch.distributed.barrier()
    model, tokenizer, image_processor = load_for_training("tiny-llava-1.5", 1)
    freeze_for_stage(model, "stage1")
    records = load_conversations(data / "captions.json", data / "images")
    dataset = ConversationDataset(records, tokenizer, model.config, "plain", 512, image_processor)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=Collator(tokenizer.pad_token_id))
    trainer.train()
    engine = trainer.model_wrapped
    params = list(trainer.model.parameters())
    record = {
        "config": config, "rank": rank, "world_size": args.world_size, "engine": type(engine).__name__,
        "deepspeed_config": trainer.accelerator.state.deepspeed_plugin.deepspeed_config,
        # the norm DeepSpeed really clips at (0: none): its default where the file has no gradient_clipping key
        "gradient_clipping": engine.gradient_clipping(),
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        # ZeRO-3 leaves each parameter an empty placeholder and keeps this rank's slice in ds_tensor
        "numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        "local_numel": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record


def _deepspeed_state_on_cpu() -> None:
    """Set Accelerate's process state up for DeepSpeed over gloo before ``TrainingArguments`` exists.

    Workaround for transformers 5.24: with ``deepspeed=...`` the Trainer builds its ``PartialState`` without a
    backend (``ddp_backend`` is ignored on that path). On a GPU machine Accelerate then picks NCCL; on a CPU it finds
    none, concludes "no distributed training" and every rank believes it is alone: the resolved
    ``train_batch_size`` counts one process, and DeepSpeed stops with "train_batch_size is not equal to
    micro_batch_per_gpu * gradient_acc_step * world_size 4 != 4 * 1 * 2". So the state is made here, gloo and
    DeepSpeed, and the Trainer is told to use it (``accelerator_config={"use_configured_state": True}``).
    """
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]


def run_hf_trainer(config: str, out_dir: str | Path, processes: int = 2, max_steps: int = 4) -> list[dict]:
    """``python -m llava_nb.lab.hf_trainer`` in ``processes`` fresh processes (``measure.torchrun``); every rank's record."""
    from .harness import torchrun

    torchrun(["llava_nb.lab.hf_trainer", "--config", config, "--out", str(out_dir), "--max-steps", str(max_steps)],
             processes)
    return [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in range(processes)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m llava_nb.lab.hf_trainer", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="zero3", help="LLaVA's DeepSpeed config: zero2, zero3")
    p.add_argument("--out", required=True)
    p.add_argument("--max-steps", type=int, default=4)
    a = p.parse_args(argv)
    from .. import _compat as compat

    compat.silence_known_warnings()
    run(a.config, a.out, a.max_steps)
    torch.distributed.barrier()
    os._exit(0)  # as measure.main: skip the process-group teardown that now and then aborts a CPU rank


if __name__ == "__main__":
    main()

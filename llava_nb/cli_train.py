"""The command line's training verbs: ``train`` (``training.api.train``, one line on a failure or an interrupt) and
``generate``. Their parsers are built here too; ``cli`` dispatches to them. Torch is imported only when a verb runs.
"""

from __future__ import annotations

import json
import sys

from .errors import LlavaNbError


def _value(text: str):
    """Parse a --set value: int, float, bool, None or string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def train(args) -> tuple[dict, str]:
    from .training.api import train as run

    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        raise LlavaNbError(f"--set {bad[0]!r} has no '='; write --set KEY=VALUE, e.g. --set max_length=4096")
    hp = {k.replace("-", "_"): _value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    for key in ("lr", "epochs", "batch_size", "micro_batch", "gradient_accumulation_steps", "max_steps", "save_every",
                "save_total_limit", "resume_from", "template"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    if args.num_processes is not None:
        hp["num_processes"] = args.num_processes
    if args.force:
        hp["force"] = True
    if args.images_outside_folder:
        hp["images_outside_folder"] = True
    if args.eval_data:
        hp["eval_data"] = args.eval_data
    result = run(args.model, args.stage, method=args.method, adapter=args.adapter, data=args.data,
                 image_folder=args.image_folder, output_dir=args.output_dir, seed=args.seed, **hp)
    if result.get("interrupted"):
        raise Interrupted(_interrupted_line(result))
    keep = ("model", "stage", "method", "steps", "train_loss", "eval_accuracy", "eval_by_type", "eval_blank_accuracy",
            "seconds", "seconds_total", "num_processes", "device", "final_dir")
    summary = {k: result[k] for k in keep if k in result}
    return summary, json.dumps(summary)


class Interrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM; its message is the one line the command prints."""


def _interrupted_line(result: dict) -> str:
    from .training.output_dir import latest_checkpoint

    latest = latest_checkpoint(result["output_dir"])
    where = f"step {result['steps']} of {result['total_steps']}"
    if latest is None:
        return f"interrupted at {where}; no checkpoint was saved (--save-every N saves one every N steps)"
    return (f"interrupted at {where}; latest checkpoint {latest}: run the same command again to continue from it")


def generate(args) -> tuple[dict, str]:
    from pathlib import Path

    from .training.inference import answer
    from .training.loading import tiny_name

    if tiny_name(args.model) and not Path(args.model).is_dir():
        print(f"warning: {args.model} is a bare name: its projector has never been trained (random weights), so the "
              f"answer ignores the image; train it (python -m llava_nb train --model {args.model} --stage 2) and "
              "pass the run's final/ folder", file=sys.stderr)
    text = answer(args.model, args.image, args.prompt, template=args.template, max_new_tokens=args.max_new_tokens)
    return {"model": args.model, "image": args.image, "prompt": args.prompt, "answer": text}, text


def train_parser(sub):
    tr = sub.add_parser("train", help="train a LLaVA (stage 1 or 2); the last line printed is JSON")
    tr.add_argument("--model", required=True, help="tiny name, checkpoint folder or Hugging Face id")
    tr.add_argument("--stage", type=int, choices=(1, 2), required=True)
    tr.add_argument("--method", help="an engine (ddp, zero1, zero2, zero3, zero3-offload, fsdp), a shorthand (lora, "
                    "qlora) or ENGINE+ADAPTER (e.g. zero3+lora); default: ddp for tiny models, LLaVA's zero2 (stage 1) "
                    "or zero3 (stage 2) for real checkpoints")
    tr.add_argument("--adapter", choices=("none", "lora", "qlora"), help="compose an adapter with --method's engine")
    tr.add_argument("--num-processes", type=int, help="default: every GPU, or 2 CPU processes")
    tr.add_argument("--data", help="LLaVA-format JSON (default for tiny models: the synthetic set)")
    tr.add_argument("--image-folder")
    tr.add_argument("--images-outside-folder", action="store_true",
                    help="accept image paths in the data that lead out of --image-folder (absolute, or with ..)")
    tr.add_argument("--eval-data", help="held-out LLaVA-format JSON for exact-match accuracy")
    tr.add_argument("--output-dir")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int, help="samples per optimizer step, over every process")
    tr.add_argument("--micro-batch", type=int, help="samples per process per forward")
    tr.add_argument("--gradient-accumulation-steps", type=int)
    tr.add_argument("--max-steps", type=int)
    tr.add_argument("--save-every", type=int, help="a checkpoint every N optimizer steps")
    tr.add_argument("--save-total-limit", type=int, help="checkpoints kept, the latest (default 2)")
    tr.add_argument("--resume-from", help="a checkpoint folder; re-running the same command continues by itself; "
                    "--set resume_lr=X changes the learning rate from there")
    tr.add_argument("--force", action="store_true", help="train again; an existing --output-dir is moved aside")
    tr.add_argument("--template", choices=("plain", "vicuna_v1", "mistral_instruct", "chat_template"))
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other setting of TrainConfig")
    return tr


def generate_parser(sub):
    g = sub.add_parser("generate", help="answer a question about an image with a trained model")
    g.add_argument("--model", required=True, help="checkpoint folder (e.g. a run's final/) or Hugging Face id")
    g.add_argument("--image", required=True)
    g.add_argument("--prompt", required=True)
    g.add_argument("--template", default=None)
    g.add_argument("--max-new-tokens", type=int, default=32)
    return g

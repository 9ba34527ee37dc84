"""The memory verbs of the command line: ``memory`` (one method), ``compare`` (every method side by side) and
``plan`` (the micro-batch and accumulation a run would use). Pure arithmetic: they import no torch.

    python -m llava_nb memory --model llava-1.5-7b --method zero3 --gpus 4 --micro-batch 8 --seq-len 2048
    python -m llava_nb compare --model llava-1.5-7b --gpus 4 --micro-batch 8
    python -m llava_nb plan --model llava-1.5-7b --method lora --gpus 1 --gpu-memory 79.18
"""

from __future__ import annotations

import argparse
import sys


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    return "\n".join(f"{k:<{width}}  {v:>{vwidth}}" for k, v in rows)


def _name_or_count(model: str):
    """A model name, or a bare parameter count such as ``7e9`` or ``7000000000`` (for ``--accounting paper``)."""
    from .models.specs import resolve_name

    try:
        return float(model)
    except ValueError:
        return resolve_name(model)


def memory(args) -> tuple[dict, str]:
    from dataclasses import asdict

    from .memory.estimate import estimate_memory, max_micro_batch
    from .models.image_tokens import parse_size

    name = _name_or_count(args.model)
    kwargs = dict(gpus=args.gpus, seq_len=args.seq_len, grad_checkpointing=not args.no_grad_checkpointing,
                  accounting=args.accounting, image_size=parse_size(args.image_size) if args.image_size else None)
    if args.attention != "sdpa":
        kwargs["attention"] = args.attention
    if args.unfreeze_vision:
        kwargs["unfreeze_vision"] = True
    est = estimate_memory(name, args.method, micro_batch=args.micro_batch, **kwargs)
    fits = est.fits(args.gpu_memory, args.headroom)
    largest = max_micro_batch(name, args.method, args.gpu_memory, args.headroom, **kwargs) \
        if args.accounting == "measured" else None
    result = {**asdict(est), "gpu_memory_gib": args.gpu_memory, "headroom": args.headroom, "fits": fits,
              "max_micro_batch": largest}
    rows = [(f"{k}{'  (transient)' if kind == 'transient' else ''}", f"{gib:8.2f} GiB") for k, gib, kind in est.table()]
    rows += [("steady", f"{est.steady_gib:8.2f} GiB"), (f"peak ({est.peak_phase or 'model states'})",
                                                        f"{est.peak_gib:8.2f} GiB")]
    if est.cpu_gib:
        rows.append(("host memory per node", f"{est.cpu_gib:8.2f} GiB"))
    usable = args.gpu_memory * (1 - args.headroom)
    verdict = (f"{'FITS' if fits else 'OUT OF MEMORY'}: peak {est.peak_gib:.2f} GiB vs {usable:.2f} GiB usable "
               f"({args.gpu_memory:g} GiB less {args.headroom:.0%} headroom)")
    head = (f"{est.model}, {args.method} on {args.gpus} GPU(s), micro-batch {args.micro_batch} x {args.seq_len} tokens "
            f"({est.image_tokens} image tokens), checkpointing {'on' if est.grad_checkpointing else 'off'}, "
            f"accounting {args.accounting}; per GPU (busiest rank):")
    tail = [verdict]
    if largest is not None:
        tail.append(f"largest micro-batch that fits: {largest}")
    return result, "\n".join([head, table(rows), *tail])


def compare(args) -> tuple[dict, str]:
    """Every base method (``methods.registry.BASE_METHODS``) at one setting: for each, exactly what ``memory`` prints
    for it (LoRA and QLoRA as DDP replicas on several GPUs)."""
    from .methods.registry import BASE_METHODS
    from .models.specs import resolve_name

    name = resolve_name(args.model)
    per_method = {m: memory(argparse.Namespace(**{**COMPARED, **vars(args), "model": name, "method": m}))[0]
                  for m in BASE_METHODS}
    rows = [(m, f"steady {r['steady_gib']:7.2f}  peak {r['peak_gib']:7.2f} GiB  "
                f"{'fits' if r['fits'] else 'OUT OF MEMORY'}, largest micro-batch {r['max_micro_batch']}")
            for m, r in per_method.items()]
    head = (f"{name} on {args.gpus} GPU(s) of {args.gpu_memory:g} GiB, micro-batch {args.micro_batch} x "
            f"{args.seq_len} tokens, checkpointing {'off' if args.no_grad_checkpointing else 'on'}; per GPU:")
    return {"model": name, "methods": per_method}, "\n".join([head, table(rows)])


#: the ``memory`` settings ``compare`` does not vary: its defaults
COMPARED = {"image_size": None, "attention": "sdpa", "unfreeze_vision": False, "accounting": "measured"}


def compare_parser(sub) -> None:
    from .memory.estimate import DEFAULT_HEADROOM, H100_80GB_GIB

    c = sub.add_parser("compare", help="every training method's GPU memory at one setting, side by side")
    c.add_argument("--model", required=True)
    c.add_argument("--gpus", type=int, default=1)
    c.add_argument("--micro-batch", type=int, default=1)
    c.add_argument("--seq-len", type=int, default=2048, help="tokens per sample, image tokens included")
    c.add_argument("--no-grad-checkpointing", action="store_true")
    c.add_argument("--gpu-memory", type=float, default=H100_80GB_GIB, help="GiB per GPU")
    c.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM, help="fraction kept free for the allocator")
    c.add_argument("--json", action="store_true")


def plan(args) -> tuple[dict, str]:
    from .models.specs import resolve_name
    from .training.plan import make_plan

    chosen = make_plan(resolve_name(args.model), args.method, gpus=args.gpus, gpu_memory_gib=args.gpu_memory,
                       global_batch=args.batch_size, seq_len=args.seq_len, headroom=args.headroom,
                       grad_checkpointing=not args.no_grad_checkpointing, micro_batch=args.micro_batch,
                       host_memory_gib=args.host_memory)
    if not chosen.fits:
        print(f"warning: micro-batch {chosen.micro_batch} does not fit (peak {chosen.peak_gib:.1f} GiB); the "
              f"calculator's largest is {chosen.largest_that_fits}", file=sys.stderr)
    return chosen.as_dict(), chosen.summary()


def plan_parser(sub) -> None:
    from .memory.estimate import DEFAULT_HEADROOM, H100_80GB_GIB
    from .methods.registry import METHODS

    p = sub.add_parser("plan", help="the micro-batch and accumulation a run would use, and its predicted memory")
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--gpu-memory", type=float, default=H100_80GB_GIB, help="GiB per GPU")
    p.add_argument("--batch-size", type=int, default=128, help="global batch (LLaVA-1.5's stage 2: 128)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, help="override the calculator's choice")
    p.add_argument("--no-grad-checkpointing", action="store_true")
    p.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM)
    p.add_argument("--host-memory", type=float, help="GiB of RAM on each machine: offloading methods are checked")
    p.add_argument("--json", action="store_true")


def memory_parser(sub) -> None:
    from .memory.estimate import ACCOUNTINGS, DEFAULT_HEADROOM, H100_80GB_GIB
    from .methods.registry import METHODS

    m = sub.add_parser("memory", help="GPU memory of training with a method: breakdown, verdict, largest batch")
    m.add_argument("--model", required=True, help="a model name, or a parameter count (7.5e9) with --accounting paper")
    m.add_argument("--method", required=True, choices=METHODS)
    m.add_argument("--gpus", type=int, default=1)
    m.add_argument("--micro-batch", type=int, default=1)
    m.add_argument("--seq-len", type=int, default=2048, help="tokens per sample, image tokens included")
    m.add_argument("--image-size", help="HEIGHTxWIDTH, v1.6 models only (sets the image tokens)")
    m.add_argument("--no-grad-checkpointing", action="store_true")
    m.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa", help="the attention kernel")
    m.add_argument("--unfreeze-vision", action="store_true", help="the ViT trains too (LLaVA-1.6's recipe)")
    m.add_argument("--gpu-memory", type=float, default=H100_80GB_GIB, help="GiB of usable memory per GPU "
                   f"(default {H100_80GB_GIB}, an 80 GB H100)")
    m.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM, help="fraction kept free for the allocator")
    m.add_argument("--accounting", choices=ACCOUNTINGS, default="measured")
    m.add_argument("--json", action="store_true")



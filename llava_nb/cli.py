"""Command line: ``python -m llava_nb params|tokens|memory|train|generate|convert|regenerate ...``.

    python -m llava_nb params --model llava-1.5-7b --method lora
    python -m llava_nb tokens --model llava-v1.6-mistral-7b --size 480x640 --json
    python -m llava_nb train --model tiny-llava-1.5 --stage 2              # runs pretraining/stage 1 if missing
    accelerate launch -m llava_nb train --model llava-hf/llava-1.5-7b-hf --stage 2 --data my.json --image-folder imgs
    python -m llava_nb generate --model .cache/runs/.../final --image photo.png --prompt "What is this?"
    python -m llava_nb memory --model llava-1.5-7b --method zero3 --gpus 4 --micro-batch 8 --seq-len 2048
    python -m llava_nb convert my_messages.json my_llava.json --image-folder my_images/
    python -m llava_nb --profile full ...      # overrides $LLAVA_NB_PROFILE

``params``, ``tokens`` and ``memory`` are arithmetic on the models' numbers (``models.specs``) and import neither
torch nor transformers; the parser imports only those pure modules.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli_memory import compare, compare_parser, memory, memory_parser, plan, plan_parser, table as _table
from .cli_train import Interrupted, generate, generate_parser, train, train_parser
from .errors import LlavaNbError, TrainingError
from .models.profiles import PROFILES, ENV_VAR


def _params(args) -> tuple[dict, str]:
    from .methods.counts import count_parameters
    from .models.specs import resolve_name

    name = resolve_name(args.model)
    targets = _lora_targets(args.lora_targets)
    c = count_parameters(name, method=args.method, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                         lora_targets=targets)
    rows = [(k, f"{v:,}") for k, v in c["breakdown"].items()]
    share = c["trainable"] / c["total"]
    rows += [("total", f"{c['total']:,}"), (f"trainable ({args.method})", f"{c['trainable']:,}"),
             ("trainable share", f"{share:.2%}")]
    if "adapter" in c:
        rows.insert(-2, (f"adapter (r={c['lora_r']})", f"{c['adapter']:,}"))
    return {"model": name, **c, "trainable_share": share}, f"{name}, method {args.method}\n" + _table(rows)


def _lora_targets(text: str | None) -> tuple[str, ...] | None:
    """``q_proj,v_proj`` -> the LLM Linears LoRA adapts (``count_parameters`` checks the names); None: LLaVA's, all."""
    if text is None:
        return None
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise LlavaNbError("--lora-targets is empty: name one or more of the LLM's Linears, e.g. q_proj,v_proj")
    return names


def _tokens(args) -> tuple[dict, str]:
    from .models.image_tokens import anyres_layout, count_image_tokens, parse_size
    from .models.specs import get_spec, resolve_name

    name = resolve_name(args.model)
    h, w = parse_size(args.size)
    cfg = get_spec(name)
    result = {"model": name, "height": h, "width": w, "tokens": count_image_tokens(cfg, h, w)}
    rows = [("image (h x w)", f"{h} x {w}")]
    if cfg.model_type == "llava_next":
        lay = anyres_layout(cfg, h, w)
        result.update(pinpoint=list(lay.pinpoint), grid=list(lay.grid), tiles=lay.num_tiles,
                      unpadded_grid=list(lay.unpadded_grid), base_tokens=lay.base_tokens,
                      grid_tokens=lay.grid_tokens, newline_tokens=lay.newline_tokens)
        rows += [("best resolution", f"{lay.pinpoint[0]} x {lay.pinpoint[1]}"),
                 ("tile grid", f"{lay.grid[0]} x {lay.grid[1]} = {lay.num_tiles} tiles + 1 global"),
                 ("unpadded feature grid", f"{lay.unpadded_grid[0]} x {lay.unpadded_grid[1]}"),
                 ("global view tokens", str(lay.base_tokens)), ("grid tokens", str(lay.grid_tokens)),
                 ("newline tokens", str(lay.newline_tokens))]
    else:
        side = cfg.vision_config.image_size
        rows.append(("resized to", f"{side} x {side}"))
    rows.append(("image tokens", str(result["tokens"])))
    return result, f"{name}\n" + _table(rows)


def _make_checkpoint(args) -> tuple[dict, str]:
    from .models.standin import check_standin, make_checkpoint

    out = args.out or _checkpoints_folder(args.like)
    check_standin(args.like, out)  # a bad name or a folder in use fails before torch is imported
    out = make_checkpoint(args.like, out, seed=args.seed)
    return {"like": args.like, "out": str(out)}, f"wrote a random-weight {args.like} to {out}"


def _checkpoints_folder(like: str) -> str:
    """``$LLAVA_NB_CHECKPOINTS/<hub id of like>``, where the full profile and train() look for it."""
    from .models.local import ENV_VAR, local_path
    from .models.specs import hub_id, resolve_name

    hub = hub_id(resolve_name(like))
    folder = local_path(hub) if hub else None
    if folder is None:
        raise LlavaNbError(f"make-checkpoint needs --out DIR (or {ENV_VAR} set, for a model with a Hub id)")
    return str(folder)


def _convert(args) -> tuple[dict, str]:
    from .data.convert import convert_file

    summary = convert_file(args.input, args.output, image_folder=args.image_folder, force=args.force,
                           system=args.system)
    text = (f"wrote {summary['records']} LLaVA records ({summary['with_image']} with an image, {summary['text_only']} "
            f"text-only; from {summary['sharegpt']} ShareGPT and {summary['messages']} messages records) to "
            f"{summary['output']}")
    return summary, text


def _convert_parser(sub) -> None:
    c = sub.add_parser("convert", help="convert ShareGPT or messages (TRL/OpenAI) JSON into LLaVA's JSON format")
    c.add_argument("input", help="a JSON list or JSON Lines file of ShareGPT and/or messages records")
    c.add_argument("output", help="the LLaVA-format JSON to write (not overwritten unless --force)")
    c.add_argument("--image-folder", help="check that every image exists under this folder")
    c.add_argument("--system", choices=("error", "fold"), default="error",
                   help="system messages: refuse them (default) or fold them into the first user turn")
    c.add_argument("--force", action="store_true", help="overwrite OUTPUT")
    c.add_argument("--json", action="store_true", help="print JSON instead of a sentence")


def _regenerate(args) -> tuple[dict, str]:
    if args.what == "sample":
        from .data.synthetic import write_sample

        out = write_sample()
        return {"sample": str(out)}, f"wrote the data sample to {out}"
    if args.what == "tokenizer":
        from .data.synthetic import training_corpus
        from .models.tokenizer import TOKENIZER_DIR, train_tokenizer

        tok = train_tokenizer(training_corpus())
        return {"tokenizer": str(TOKENIZER_DIR), "size": len(tok)}, f"saved a {len(tok)}-token tokenizer to {TOKENIZER_DIR}"
    from .training.pretrain import ensure_pretrained_parts

    vision, language = ensure_pretrained_parts(retrain=True)
    return {"vision": str(vision), "language": str(language)}, f"saved {vision} and {language}"


def build_parser() -> argparse.ArgumentParser:
    """One sub-command per job; the arithmetic verbs (params, tokens, memory) import no torch."""
    parser = argparse.ArgumentParser(prog="python -m llava_nb", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, help=f"execution profile (overrides ${ENV_VAR})")
    sub = parser.add_subparsers(dest="command", required=True)
    _params_parser(sub)
    t = sub.add_parser("tokens", help="image tokens one image becomes")
    t.add_argument("--model", required=True)
    t.add_argument("--size", required=True, help="HEIGHTxWIDTH in pixels, e.g. 480x640")
    t.add_argument("--json", action="store_true")
    tr = train_parser(sub)
    g = generate_parser(sub)
    memory_parser(sub)
    compare_parser(sub)
    plan_parser(sub)
    _convert_parser(sub)
    mk = sub.add_parser("make-checkpoint", help="write a full-size random-weight checkpoint in the llava-hf format")
    mk.add_argument("--like", required=True, help="the model it stands in for, e.g. llava-1.5-7b")
    mk.add_argument("--out", help="a new or empty folder (default: $LLAVA_NB_CHECKPOINTS/<hub id>)")
    mk.add_argument("--seed", type=int, default=0)
    w = sub.add_parser("worker")  # internal: one training process of launch()'s fresh-process route
    w.add_argument("spec")
    r = sub.add_parser("regenerate", help="retrain a committed artefact")
    r.add_argument("what", choices=("tokenizer", "parts", "sample"))
    for p in (tr, g, r, mk):
        p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    return parser


def _params_parser(sub) -> None:
    from .methods.counts import ALIASES
    from .methods.registry import METHODS
    from .models.params import LLAVA_LORA_R

    p = sub.add_parser("params", help="parameter counts of a model under a training method")
    p.add_argument("--model", required=True, help="model name or Hugging Face id, e.g. llava-1.5-7b")
    p.add_argument("--method", default="full", choices=(*ALIASES, *METHODS))
    p.add_argument("--lora-r", type=int, default=LLAVA_LORA_R, help="adapter methods: the rank (alpha is 2 r, as LLaVA's)")
    p.add_argument("--lora-targets", help="adapter methods: the LLM Linears adapted, e.g. q_proj,v_proj (default all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(argv=None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.profile:
        os.environ[ENV_VAR] = args.profile
    if args.command == "worker":
        from .training.config import TrainSpec
        from .training.worker import run_worker

        run_worker(TrainSpec.from_json(json.loads(open(args.spec).read())))
        return 0
    try:
        handler = {"params": _params, "tokens": _tokens, "train": train, "generate": generate,
                   "regenerate": _regenerate, "memory": memory, "compare": compare, "plan": plan,
                   "make-checkpoint": _make_checkpoint, "convert": _convert}[args.command]
        result, text = handler(args)
    except LlavaNbError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:  # one line; each process's traceback is in its error-rank<N>.txt
        first = str(err).splitlines()[1] if len(str(err).splitlines()) > 1 else str(err)
        print(f"error: training failed: {first}" + (f" (tracebacks: {', '.join(err.files)})" if err.files else ""),
              file=sys.stderr)
        return 1
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return 130  # the shell's code for a command ended by Ctrl-C
    except KeyboardInterrupt:  # before or after training: nothing to save
        print("interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2) if args.json else text)
    return 0

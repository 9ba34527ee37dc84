"""Command line: ``python -m llava_nb params|tokens ...``.

    python -m llava_nb params --model llava-1.5-7b --method lora
    python -m llava_nb tokens --model llava-v1.6-mistral-7b --size 480x640 --json
    python -m llava_nb --profile full ...      # overrides $LLAVA_NB_PROFILE
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import LlavaNbError
from .profiles import PROFILES, ENV_VAR


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    return "\n".join(f"{k:<{width}}  {v:>{vwidth}}" for k, v in rows)


def _params(args) -> tuple[dict, str]:
    from .architectures import resolve_name
    from .params import count_parameters

    name = resolve_name(args.model)
    c = count_parameters(name, method=args.method)
    rows = [(k, f"{v:,}") for k, v in c["breakdown"].items()]
    rows += [("total", f"{c['total']:,}"), (f"trainable ({args.method})", f"{c['trainable']:,}"),
             ("trainable share", f"{c['trainable'] / c['total']:.2%}")]
    if "adapter" in c:
        rows.insert(-2, (f"adapter (r={c['lora_r']})", f"{c['adapter']:,}"))
    return {"model": name, **c}, f"{name}, method {args.method}\n" + _table(rows)


def _tokens(args) -> tuple[dict, str]:
    from .architectures import get_config, resolve_name
    from .image_tokens import anyres_layout, count_image_tokens, parse_size

    name = resolve_name(args.model)
    h, w = parse_size(args.size)
    cfg = get_config(name)
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


def build_parser() -> argparse.ArgumentParser:
    from .params import METHODS

    parser = argparse.ArgumentParser(prog="python -m llava_nb", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, help=f"execution profile (overrides ${ENV_VAR})")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="parameter counts of a model under a training method")
    p.add_argument("--model", required=True, help="model name or Hugging Face id, e.g. llava-1.5-7b")
    p.add_argument("--method", default="full", choices=METHODS)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    t = sub.add_parser("tokens", help="image tokens one image becomes")
    t.add_argument("--model", required=True)
    t.add_argument("--size", required=True, help="HEIGHTxWIDTH in pixels, e.g. 480x640")
    t.add_argument("--json", action="store_true")
    return parser


def main(argv=None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.profile:
        os.environ[ENV_VAR] = args.profile
    try:
        result, text = (_params if args.command == "params" else _tokens)(args)
    except LlavaNbError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else text)
    return 0

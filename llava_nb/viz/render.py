"""HTML renderings for the chapters: token-level label masks."""

from __future__ import annotations

import html

from ..models.templates import IGNORE_INDEX

STYLE = ("font-family: monospace; font-size: 13px; line-height: 2.0; white-space: pre-wrap; "
         "word-break: break-all; max-width: 100%;")
COLOURS = {"supervised": "#b7e4c7", "masked": "#eeeeee", "image": "#ffd6a5"}


def token_mask_html(tokenizer, input_ids, labels, image_token_id: int, max_image_tokens: int = 6) -> str:
    """One box per token: green = supervised (label = token id), grey = masked (-100), orange = image token.
    Runs of image tokens longer than ``max_image_tokens`` are shortened, with the count shown."""
    boxes, i, n = [], 0, len(input_ids)
    while i < n:
        tok, lab = int(input_ids[i]), int(labels[i])
        if tok == image_token_id:
            j = i
            while j < n and int(input_ids[j]) == image_token_id:
                j += 1
            shown = min(j - i, max_image_tokens)
            label = "&lt;image&gt;" * shown + (f" ... x{j - i}" if j - i > shown else "")
            boxes.append(f'<span style="background:{COLOURS["image"]};border:1px solid #ccc;padding:1px">{label}</span>')
            i = j
            continue
        text = html.escape(tokenizer.decode([tok])).replace("\n", "\\n")
        kind = "supervised" if lab != IGNORE_INDEX else "masked"
        boxes.append(f'<span style="background:{COLOURS[kind]};border:1px solid #ccc;padding:1px">{text}</span>')
        i += 1
    legend = " ".join(f'<span style="background:{c};padding:1px 4px">{k}</span>' for k, c in COLOURS.items())
    return f'<div style="{STYLE}">{"".join(boxes)}</div><div style="font-size:12px">{legend}</div>'

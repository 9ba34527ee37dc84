"""Figures the chapters share: patch grids, anyres tiles, parameter breakdowns, token curves.

Every function returns the matplotlib ``Figure`` (or draws on a given ``Axes``) so a static page shows what an
interactive widget would.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from .image_tokens import AnyresLayout

STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "figure.dpi": 100, "savefig.dpi": 100,
         "svg.hashsalt": "llava-nb"}
plt.rcParams.update(STYLE)

PART_COLOURS = {"vision_tower": "#4C72B0", "projector": "#DD8452", "image_newline": "#937860",
                "language_model": "#55A868", "lm_head": "#C44E52"}


def draw_patch_grid(ax, image, side: int, patch: int, title: str | None = None):
    """Show ``image`` resized to ``side x side`` (what the ViT sees) with a line every ``patch`` pixels."""
    view = np.asarray(image.convert("RGB").resize((side, side)))
    ax.imshow(view, extent=(0, side, side, 0))
    for x in range(0, side + 1, patch):
        ax.axvline(x, color="white", lw=0.6)
        ax.axhline(x, color="white", lw=0.6)
    n = side // patch
    ax.set_title(title or f"{side} px, {patch} px patches: {n} x {n} = {n * n}")
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    return ax


def draw_anyres(image, layout: AnyresLayout):
    """Three panels: the image resized and padded onto the chosen canvas with its tiles, the global view, and the
    feature grid with the unpadded region and the newline column."""
    from PIL import Image

    bh, bw = layout.pinpoint
    rh, rw = layout.resized
    tile = layout.tile
    canvas = Image.new("RGB", (bw, bh), (0, 0, 0))
    canvas.paste(image.convert("RGB").resize((rw, rh)), ((bw - rw) // 2, (bh - rh) // 2))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), gridspec_kw={"width_ratios": [bw / bh, 1, 1.3]})
    ax = axes[0]
    ax.imshow(np.asarray(canvas), extent=(0, bw, bh, 0))
    for r in range(layout.grid[0]):
        for c in range(layout.grid[1]):
            ax.add_patch(Rectangle((c * tile, r * tile), tile, tile, fill=False, ec="yellow", lw=2))
            ax.text(c * tile + 8, r * tile + 30, f"tile {r * layout.grid[1] + c + 1}", color="yellow", fontsize=10)
    ax.set_title(f"canvas {bh} x {bw}: {layout.grid[0]} x {layout.grid[1]} tiles of {tile} px")
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    draw_patch_grid(axes[1], image, tile, tile // layout.patches_per_tile,
                    title=f"global view: squashed to {tile} x {tile}")
    ax = axes[2]
    ch, cw = layout.feature_grid
    uh, uw = layout.unpadded_grid
    grid = np.zeros((ch, cw + 1))
    top, left = (ch - uh) // 2, (cw - uw) // 2
    grid[top:top + uh, left:left + uw] = 1  # kept features
    grid[top:top + uh, cw] = 2  # one image_newline per kept row
    cmap = matplotlib.colors.ListedColormap(["#dddddd", "#55A868", "#DD8452"])
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, extent=(0, cw + 1, ch, 0), interpolation="nearest")
    ax.set_title(f"features: {uh} x {uw} kept (green) + {uh} newlines (orange)")
    ax.set_xlabel("feature column (patches)")
    ax.set_ylabel("feature row (patches)")
    fig.tight_layout()
    return fig


def plot_param_breakdown(counts: dict[str, dict], title: str = "Where the parameters are"):
    """Horizontal stacked bars, one per model: ``counts`` maps a label to ``count_parameters(...)``'s result."""
    fig, ax = plt.subplots(figsize=(9, 0.7 * len(counts) + 1.6))
    labels = list(counts)
    for i, label in enumerate(labels):
        left = 0.0
        for part, colour in PART_COLOURS.items():
            value = counts[label]["breakdown"][part] / 1e9
            if value > 0:
                ax.barh(i, value, left=left, color=colour, label=part if i == 0 or part == "image_newline" else None)
                left += value
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()  # first model on top
    ax.set_xlabel("parameters (billions)")
    ax.set_title(title)
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax.legend(unique.values(), unique.keys(), loc="lower right", fontsize=9)
    fig.tight_layout()
    return fig

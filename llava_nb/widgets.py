"""Interactive widgets. A static page cannot run their Python callbacks, so every chapter also shows the same
information as a figure or table next to each widget."""

from __future__ import annotations

from .architectures import as_config
from .image_tokens import anyres_layout, count_image_tokens


def anyres_summary(model, height: int, width: int) -> dict:
    """The anyres decision for one size as a flat dict (what the widget prints)."""
    lay = anyres_layout(model, height, width)
    return {
        "image (h x w)": f"{height} x {width}",
        "best resolution": f"{lay.pinpoint[0]} x {lay.pinpoint[1]}",
        "tile grid": f"{lay.grid[0]} x {lay.grid[1]} = {lay.num_tiles} tiles + 1 global view",
        "unpadded feature grid": f"{lay.unpadded_grid[0]} x {lay.unpadded_grid[1]}",
        "tokens": f"{lay.base_tokens} global + {lay.grid_tokens} grid + {lay.newline_tokens} newlines = {lay.tokens}",
    }


def anyres_widget(model="llava-v1.6-mistral-7b", max_side: int = 2000):
    """Height and width sliders in; chosen grid, tiles and token count out (with a sketch of the canvas)."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cfg = as_config(model)
    height = w.IntSlider(value=480, min=1, max=max_side, step=1, description="height (px)",
                         continuous_update=False, style={"description_width": "initial"})
    width = w.IntSlider(value=640, min=1, max=max_side, step=1, description="width (px)",
                        continuous_update=False, style={"description_width": "initial"})

    def show(height, width):
        summary = anyres_summary(cfg, height, width)
        lay = anyres_layout(cfg, height, width)
        print("\n".join(f"{k:>22}: {v}" for k, v in summary.items()))
        assert lay.tokens == count_image_tokens(cfg, height, width)
        bh, bw = lay.pinpoint
        rh, rw = lay.resized
        fig, ax = plt.subplots(figsize=(4.5, 4.5 * bh / bw if bw >= bh else 4.5))
        ax.add_patch(Rectangle(((bw - rw) / 2, (bh - rh) / 2), rw, rh, color="#4C72B0", alpha=0.6,
                               label="resized image"))
        for r in range(lay.grid[0]):
            for c in range(lay.grid[1]):
                ax.add_patch(Rectangle((c * lay.tile, r * lay.tile), lay.tile, lay.tile, fill=False, ec="k", lw=1.5))
        ax.set_xlim(0, bw)
        ax.set_ylim(bh, 0)
        ax.set_aspect("equal")
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
        ax.set_title(f"{lay.grid[0]} x {lay.grid[1]} tiles, {lay.tokens} tokens")
        ax.legend(loc="upper right", fontsize=9)
        plt.show()

    out = w.interactive_output(show, {"height": height, "width": width})
    return w.VBox([w.HBox([height, width]), out])

"""Interactive widgets. A static page cannot run their Python callbacks, so every chapter also shows the same
information as a figure or table next to each widget."""

from __future__ import annotations

from ..models.architectures import as_config
from ..models.image_tokens import anyres_layout, count_image_tokens


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


def memory_widget(model="llava-1.5-7b", method="zero3", gpus=4, micro_batch=1, seq_len=2048, gpu_memory_gib=79.18):
    """The calculator: model, method, GPUs, micro-batch, sequence length, checkpointing and GPU memory in; the
    stacked breakdown, the verdict and the largest micro-batch that fits out."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    from ..memory.estimate import METHODS, estimate_memory, max_micro_batch
    from ..models.architectures import KNOWN_MODELS

    style = {"description_width": "initial"}
    controls = {
        "model": w.Dropdown(options=[m for m in KNOWN_MODELS if not m.startswith("tiny")], value=model,
                            description="model", style=style),
        "method": w.Dropdown(options=METHODS, value=method, description="method", style=style),
        "gpus": w.Dropdown(options=[1, 2, 4, 8, 16, 32, 64], value=gpus, description="GPUs", style=style),
        "micro_batch": w.IntSlider(value=micro_batch, min=1, max=64, description="micro-batch", style=style,
                                   continuous_update=False),
        "seq_len": w.Dropdown(options=[1024, 2048, 4096, 8192], value=seq_len, description="seq_len (tokens)",
                              style=style),
        "checkpointing": w.Checkbox(value=True, description="gradient checkpointing", style=style),
        "gpu_memory": w.Dropdown(options=[("24 GB (23.6 GiB)", 23.6), ("40 GB (39.4 GiB)", 39.4),
                                          ("48 GB (47.5 GiB)", 47.5), ("80 GB (79.18 GiB)", 79.18),
                                          ("141 GB (139.8 GiB)", 139.8)],
                                 value=gpu_memory_gib, description="GPU memory", style=style),
    }

    def show(model, method, gpus, micro_batch, seq_len, checkpointing, gpu_memory):
        from ..errors import LlavaNbError
        from .plotting import plot_memory_breakdown

        kwargs = dict(gpus=gpus, seq_len=seq_len, grad_checkpointing=checkpointing)
        try:
            est = estimate_memory(model, method, micro_batch=micro_batch, **kwargs)
        except LlavaNbError as err:
            print(f"cannot run: {err}")
            return
        best = max_micro_batch(model, method, gpu_memory, **kwargs)
        verdict = "fits" if est.fits(gpu_memory) else "does NOT fit"
        print(f"steady {est.steady_gib:.1f} GiB, peak {est.peak_gib:.1f} GiB ({est.peak_phase}): {verdict} "
              f"{gpu_memory} GiB less 5% headroom; largest micro-batch that fits: {best}"
              + (f"; host memory {est.cpu_gib:.0f} GiB per node" if est.cpu_gib else ""))
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        plot_memory_breakdown({f"{method} x{gpus}": est}, ax=ax, gpu_memory_gib=gpu_memory)
        plt.show()

    out = w.interactive_output(show, controls)
    c = list(controls.values())
    return w.VBox([w.HBox(c[:3]), w.HBox(c[3:5]), w.HBox(c[5:]), out])


def comparison_widget(model="llava-1.5-7b", gpus=4, micro_batch=1, seq_len=2048, gpu_memory_gib=79.18):
    """Every method side by side for one setting (LoRA and QLoRA as DDP replicas on several GPUs)."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    from ..memory.estimate import estimate_memory
    from ..methods.registry import BASE_METHODS

    style = {"description_width": "initial"}
    controls = {
        "gpus": w.Dropdown(options=[1, 2, 4, 8, 16], value=gpus, description="GPUs", style=style),
        "micro_batch": w.IntSlider(value=micro_batch, min=1, max=32, description="micro-batch", style=style,
                                   continuous_update=False),
        "seq_len": w.Dropdown(options=[1024, 2048, 4096], value=seq_len, description="seq_len (tokens)", style=style),
        "gpu_memory": w.Dropdown(options=[("24 GB", 23.6), ("40 GB", 39.4), ("80 GB", 79.18)], value=gpu_memory_gib,
                                 description="GPU memory", style=style),
    }

    def show(gpus, micro_batch, seq_len, gpu_memory):
        from .plotting import plot_memory_breakdown

        ests = {m: estimate_memory(model, m, gpus=gpus, micro_batch=micro_batch, seq_len=seq_len) for m in BASE_METHODS}
        fig, ax = plt.subplots(figsize=(8.5, 4.2))
        plot_memory_breakdown(ests, ax=ax, gpu_memory_gib=gpu_memory,
                              title=f"{model}, {gpus} GPU(s), micro-batch {micro_batch} x {seq_len}")
        plt.show()

    out = w.interactive_output(show, controls)
    return w.VBox([w.HBox(list(controls.values())), out])


def lora_summary(model="llava-1.5-7b", r: int = 128, targets=None, alpha: int | None = None) -> dict:
    """LoRA on the LLM's Linears named in ``targets`` (default: all seven, LLaVA's recipe) at rank ``r``: adapter
    parameters, with the projector trained in full as LLaVA does, the trainable share of the base model, and the
    adapter file's size in bf16 (the projector included). The numbers are ``python -m llava_nb params --method lora``'s
    (``methods.counts.count_parameters``), which the book's live calculator shows too."""
    from ..methods.counts import count_parameters
    from ..methods.lora import LLM_TARGETS

    targets = tuple(targets or LLM_TARGETS)
    c = count_parameters(model, "lora", lora_r=r, lora_targets=targets)
    return {"rank r": r, "alpha (LLaVA: 2 r)": alpha or 2 * r, "targets": ", ".join(targets),
            "adapter parameters": c["adapter"], "projector parameters (trained in full)": c["breakdown"]["projector"],
            "trainable share of the model": c["trainable"] / c["total"],
            "adapter file, bf16 (MB)": 2 * c["trainable"] / 1e6}


def lora_widget(model="llava-1.5-7b"):
    """Rank and target modules in; adapter size, trainable share and file size out."""
    import ipywidgets as w
    import pandas as pd
    from IPython.display import display

    from ..methods.lora import LLM_TARGETS

    rank = w.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64, 128, 256], value=128, description="rank r",
                             continuous_update=False, style={"description_width": "initial"})
    targets = w.SelectMultiple(options=LLM_TARGETS, value=LLM_TARGETS, rows=len(LLM_TARGETS),
                               description="target Linears", style={"description_width": "initial"})
    out = w.Output()

    def show(*_):
        out.clear_output(wait=True)
        with out:
            if not targets.value:
                print("choose at least one target module")
                return
            display(pd.Series(lora_summary(model, rank.value, targets.value), name=str(model)).to_frame())

    rank.observe(show, "value")
    targets.observe(show, "value")
    show()
    return w.VBox([w.HBox([rank, targets]), out])

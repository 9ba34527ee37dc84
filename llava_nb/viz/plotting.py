"""Figures the chapters share: patch grids, anyres tiles, parameter breakdowns, token curves.

Every function returns the matplotlib ``Figure`` (or draws on a given ``Axes``) so a static page shows what an
interactive widget would.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from ..models.image_tokens import AnyresLayout

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


# ---------------------------------------------------------------- memory

MEMORY_COLOURS = {"weights": "#4C72B0", "master_weights": "#8172B3", "optimizer_states": "#C44E52",
                  "gradient_buffer": "#DD8452", "comm_buffers": "#937860", "gradients": "#DA8BC3",
                  "optimizer_temporaries": "#CCB974", "activations": "#55A868", "logits_and_loss": "#64B5CD",
                  "gathered_params": "#8C8C8C"}


def _component(name: str) -> str:
    return name.split(" (")[0]


def plot_memory_breakdown(estimates: dict, ax=None, gpu_memory_gib: float | None = None, headroom: float = 0.05,
                          title: str | None = None):
    """Stacked bars, one per labelled ``MemoryEstimate``: persistent parts solid, the peak phase's transient parts
    hatched; a dashed line at the card's usable memory."""
    from ..memory.estimate import GIB

    if ax is None:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(estimates) + 2.5), 4.2))
    seen = set()
    for x, (label, est) in enumerate(estimates.items()):
        bottom = 0.0
        for name, nbytes in est.breakdown.items():
            comp = _component(name)
            gib = nbytes / GIB
            ax.bar(x, gib, bottom=bottom, color=MEMORY_COLOURS.get(comp, "#999999"),
                   hatch="//" if name in est.transient else None, edgecolor="white", linewidth=0.5,
                   label=comp if comp not in seen else None)
            seen.add(comp)
            bottom += gib
        ax.text(x, bottom, f"{est.peak_gib:.1f}", ha="center", va="bottom", fontsize=9)
    if gpu_memory_gib:
        usable = gpu_memory_gib * (1 - headroom)
        ax.axhline(usable, color="k", ls="--", lw=1)
        ax.set_ylim(0, max(ax.get_ylim()[1], 1.12 * usable))  # room for the label above the line
        ax.text(len(estimates) - 0.6, usable, f"usable {usable:.1f}", va="bottom", ha="right", fontsize=9)
    ax.set_xticks(range(len(estimates)), list(estimates), rotation=20, ha="right")
    ax.set_ylabel("GiB per GPU (busiest rank)")
    ax.set_title(title or "steady (solid) + peak transients (hatched)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.figure.tight_layout()
    return ax.figure


def plot_predicted_vs_measured(rows: list[dict], key: str = "peak", ax=None, title: str | None = None):
    """Predicted against measured GiB (``key`` is "steady" or "peak"), one marker per method; the diagonal and a
    +-10% band. Runs that ran out of memory are drawn at their prediction on the top edge."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 5.0))
    markers = dict(zip(["lora", "qlora", "zero1", "zero2", "zero3", "fsdp", "ddp", "zero3-offload"], "osD^vP*X"))
    ok = [r for r in rows if not r["measured_oom"]]
    hi = max([r[f"predicted_{key}_gib"] for r in rows] + [r[f"measured_{key}_gib"] for r in ok]) * 1.08
    xs = np.linspace(0, hi, 2)
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.85", label="±10%")
    for method in sorted({r["method"] for r in rows}):
        pts = [r for r in ok if r["method"] == method]
        if pts:
            ax.scatter([r[f"measured_{key}_gib"] for r in pts], [r[f"predicted_{key}_gib"] for r in pts],
                       marker=markers.get(method, "o"), label=method, s=40)
    oom = [r for r in rows if r["measured_oom"]]
    if oom:
        ax.scatter([hi * 0.98] * len(oom), [r[f"predicted_{key}_gib"] for r in oom], marker="x", c="red",
                   label="ran out of memory", s=50)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel(f"measured {key} (GiB)")
    ax.set_ylabel(f"predicted {key} (GiB)")
    ax.set_title(title or f"{key}: calculator vs. real runs")
    ax.legend(fontsize=8, loc="upper left")
    ax.figure.tight_layout()
    return ax.figure


def _fsdp_unit(name: str) -> tuple[str, str]:
    """("all_gather", "language_model.layers.0") from "FSDP::all_gather (model.language_model.layers.0)"; the root
    module's ranges carry no name."""
    kind, _, unit = name.removeprefix("FSDP::").partition(" (")
    return kind, unit.rstrip(")").removeprefix("model.") or "root (embeddings, projector, lm_head, ...)"


def plot_fsdp_timeline(ranks: list[list[dict]], ax=None):
    """One training step of FSDP2 per rank, from the profiler's ``FSDP::`` ranges (``fsdp_demo.timeline``): for every
    sharded unit, when its parameters were all-gathered (forward and backward), when it computed its forward (from
    the end of ``pre_forward`` to ``post_forward``; not for the root, whose forward spans all the others) and when
    its gradients were reduce-scattered."""
    n = len(ranks)
    if ax is None:
        fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), sharex=True, squeeze=False)
        axes = axes[:, 0]
    else:
        axes = [ax]
    colours = {"all_gather": "#4C72B0", "forward": "#55A868", "post_backward_reduce": "#C44E52"}
    labels = {"all_gather": "all-gather (parameters)", "forward": "forward compute",
              "post_backward_reduce": "reduce-scatter (gradients)"}
    for rank, (ax, events) in enumerate(zip(axes, ranks)):
        units = []
        for e in events:
            kind, unit = _fsdp_unit(e["name"])
            if kind in ("all_gather", "pre_forward") and unit not in units:
                units.append(unit)
        row = {u: i for i, u in enumerate(units)}
        bars = {k: [] for k in colours}
        pre_end = {}
        for e in events:
            kind, unit = _fsdp_unit(e["name"])
            if unit not in row:
                continue
            if kind == "pre_forward":
                pre_end[unit] = e["end_ms"]
            elif kind == "post_forward" and unit in pre_end:
                start = pre_end.pop(unit)
                if not unit.startswith("root"):  # the root's forward encloses every other unit's: not drawn
                    bars["forward"].append((row[unit], start, e["start_ms"]))
            elif kind in ("all_gather", "post_backward_reduce"):
                bars[kind].append((row[unit], e["start_ms"], e["end_ms"]))
        for kind, spans in bars.items():
            for i, (y, a, b) in enumerate(spans):
                ax.barh(y, b - a, left=a, height=0.6, color=colours[kind], label=labels[kind] if i == 0 else None)
        ax.set_yticks(range(len(units)), units, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"rank {rank}: one training step (forward, then backward)")
        ax.grid(axis="x", color="0.9")
    axes[-1].set_xlabel("time since the step started (ms)")
    fig = axes[0].figure
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=9, frameon=False)
    return fig


def plot_engine_speed(rows: list[dict], ax=None, title: str = "Training speed (MFU on each bar)"):
    """Grouped bars: tokens per second of each engine at each (micro-batch x sequence) point, MFU on the bars where
    known. ``rows`` hold ``engine``, ``point``, ``tokens_per_s`` and optionally ``mfu``."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 4))
    points = list(dict.fromkeys(r["point"] for r in rows))
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    width = 0.8 / len(engines)
    for j, engine in enumerate(engines):
        for i, point in enumerate(points):
            r = next((r for r in rows if r["engine"] == engine and r["point"] == point), None)
            if r is None:
                continue
            x = i + (j - (len(engines) - 1) / 2) * width
            ax.bar(x, r["tokens_per_s"], width, color=f"C{j}", label=engine if i == 0 else None)
            if r.get("mfu") is not None:
                ax.text(x, r["tokens_per_s"], f"{100 * r['mfu']:.0f}%", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(points)), points)
    ax.set_xlabel("micro-batch x sequence length per GPU")
    ax.set_ylabel("tokens per second (all GPUs)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def plot_step_phases(rows: list[dict], ax=None):
    """Stacked bars: seconds of forward, backward and optimizer step per engine and point (``rows`` hold
    ``label``, ``forward``, ``backward``, ``step``)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 4))
    labels = [r["label"] for r in rows]
    bottom = np.zeros(len(rows))
    for i, phase in enumerate(("forward", "backward", "step")):
        vals = np.array([r[phase] for r in rows])
        ax.bar(range(len(rows)), vals, bottom=bottom, color=f"C{i}", label=phase if phase != "step" else "optimizer step")
        bottom += vals
    ax.set_xticks(range(len(rows)), labels, fontsize=8, rotation=20, ha="right")
    ax.set_ylabel("seconds per training step")
    ax.set_title("Where a step's time goes")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure

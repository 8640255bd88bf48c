"""The picture of an :class:`detkit.explain.Explanation`: one PNG a person can read.

Top left: the kept detections, each with its responsible grid cell filled in its class colour,
a line from the cell to the box centre and the prior (anchor at the cell centre, or SSD default
box) dashed. Top right: the NMS trace: kept boxes solid, each suppressed candidate dotted, joined
to the kept box that suppressed it and labelled with their IoU. Below, per level: the best
confidence ``c`` per cell, and the best ``c·p`` over the predicted classes, over the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from detkit.visualize import class_color

if TYPE_CHECKING:  # the picture is drawn from an Explanation; explain imports this lazily
    from detkit.explain import Explanation

MAX_TRACE_LABELS = 40  # IoU labels beyond this many suppressed boxes would hide the picture


def _color(label: int) -> np.ndarray:
    return np.array(class_color(label)) / 255.0


def _box(ax, box, color, **kw) -> None:
    x1, y1, x2, y2 = box
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, **kw))


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _detections(ax, e: Explanation) -> None:
    ax.imshow(e.image)
    for k in e.kept:
        color, stride = _color(k["label"]), k["stride"]
        gx, gy = k["cell"]
        ax.add_patch(Rectangle((gx * stride, gy * stride), stride, stride, color=color, alpha=0.45))
        cx, cy = (gx + 0.5) * stride, (gy + 0.5) * stride
        bx, by = _centre(k["box"])
        ax.plot([cx, bx], [cy, by], color=color, lw=1)
        if "anchor" in k:
            aw, ah = k["anchor"]
            _box(ax, (cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2), color, lw=0.8, ls="--")
        else:
            _box(ax, k["default_box"], color, lw=0.8, ls="--")
        _box(ax, k["box"], color, lw=2)
        ax.text(k["box"][0], k["box"][1] - 2, f"{k['class']} {k['score']:.2f} (L{k['level']} "
                f"cell {gx},{gy})", color="white", fontsize=7,
                bbox={"facecolor": color, "pad": 1, "lw": 0})  # fmt: skip
    ax.set_title(f"{len(e.kept)} kept: cell that predicted each (filled), prior (dashed)")


def _trace(ax, e: Explanation) -> None:
    ax.imshow(e.image)
    for k in e.kept:
        _box(ax, k["box"], _color(k["label"]), lw=2)
    for n, s in enumerate(e.suppressed):
        color = _color(s["label"])
        _box(ax, s["box"], color, lw=0.8, ls=":")
        (sx, sy), (kx, ky) = _centre(s["box"]), _centre(e.kept[s["by"]]["box"])
        ax.plot([sx, kx], [sy, ky], color=color, lw=0.6, alpha=0.8)
        if n < MAX_TRACE_LABELS:
            ax.text(sx, sy, f"{s['iou']:.2f}", color="black", fontsize=6,
                    bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.5, "lw": 0})  # fmt: skip
    ax.set_title(f"NMS: {len(e.suppressed)} suppressed (dotted) -> suppressor, IoU > {e.iou:g}")


def plot_explanation(e: Explanation, path: str | Path) -> Path:
    """Write the explanation picture (see the module docstring) to ``path``."""
    n = max(len(e.levels), 2)
    fig = Figure(figsize=(4.2 * n, 4.2 * n / 2 + 6.6), dpi=110, layout="constrained")
    grid = fig.add_gridspec(3, 2 * n, height_ratios=[n / 2 * 1.9, 1, 1])
    _detections(fig.add_subplot(grid[0, :n]), e)
    _trace(fig.add_subplot(grid[0, n:]), e)
    s = e.image.shape[0]
    for lv, level in enumerate(e.levels):
        for row, (key, name) in enumerate(
            (("c", "confidence c"), ("cp", "c·p, predicted classes"))
        ):
            ax = fig.add_subplot(
                grid[1 + row, 2 * lv * n // len(e.levels) : 2 * (lv + 1) * n // len(e.levels)]
            )
            ax.imshow(e.image, alpha=0.5)
            im = ax.imshow(level[key], cmap="magma", vmin=0, vmax=1, alpha=0.75,
                           extent=(0, s, s, 0), interpolation="nearest")  # fmt: skip
            for k in e.kept:
                if k["level"] == lv:
                    gx, gy = k["cell"]
                    st = k["stride"]
                    ax.add_patch(
                        Rectangle((gx * st, gy * st), st, st, fill=False, edgecolor="cyan", lw=1.5)
                    )
            h, w = level["grid"]
            ax.set_title(f"level {lv} (stride {level['stride']:g}, {h}x{w}): {name}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=fig.axes[2:], shrink=0.6, label="probability")
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=fig.dpi)
    return path

"""Explain one image: the grid cell (or SSD default box) behind each detection, ``c`` and ``c·p``
over the image, and the NMS trace of :func:`detkit.inference.postprocess.postprocess`. Boxes are
in input px (the letterboxed ``S x S`` image, where the grid lives); ``box_orig`` in orig px."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from detkit.boxes.scoring import class_scores
from detkit.core.visualize import class_color
from detkit.data import LetterboxInfo, images_to_float, letterbox_image
from detkit.inference.postprocess import postprocess

if TYPE_CHECKING:
    from detkit.data.types import ImageLike


@dataclass
class Explanation:
    """One image's detections with their origin and the NMS trace.

    Attributes:
        image: ``[S, S, 3]`` uint8 RGB network input (letterboxed); ``info`` its letterbox.
        kind: ``"grid"`` (priors ``(gx, gy, stride, anchor_w, anchor_h)``) or ``"ssd"``
            (default boxes ``cxcywh``).
        levels: per level ``{"stride", "grid": (H, W), "priors_per_cell", "c": [H, W],
            "cp": [H, W]}``: the best ``c`` and the best ``c·p`` over the predicted classes in
            each cell (over its priors).
        kept: per detection, score order: ``class``, ``label``, ``score``, ``c``, ``p``,
            ``box`` (xyxy input px), ``box_orig`` (xyxy orig px), ``prior_index``, ``level``,
            ``stride``, ``cell`` ``(gx, gy)``, and ``anchor`` ``(w, h)`` (grid) or
            ``default_box`` (xyxy input px, SSD).
        suppressed: per suppressed candidate: ``class``, ``label``, ``score``, ``box``,
            ``prior_index``, ``by`` (index into ``kept``), ``iou``.
        conf, iou, max_det: the post-processing settings traced.
    """

    image: np.ndarray
    info: LetterboxInfo
    class_names: list[str]
    kind: str
    levels: list[dict[str, Any]]
    conf: float
    iou: float
    max_det: int
    kept: list[dict[str, Any]] = field(default_factory=list)
    suppressed: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, levels (without the heatmaps), kept boxes, the NMS trace."""
        return {
            "model": self.kind,
            "img_size": int(self.image.shape[0]),
            "conf": self.conf,
            "iou": self.iou,
            "max_det": self.max_det,
            "frame": "input px (letterboxed network input); box_orig in original-image px",
            "levels": [{k: v for k, v in lv.items() if k not in ("c", "cp")} for lv in self.levels],
            "kept": self.kept,
            "suppressed": self.suppressed,
        }

    def save(self, out_dir: str | Path, stem: str = "explain") -> tuple[Path, Path]:
        """Write ``<stem>.png`` (:func:`plot_explanation`) and ``<stem>.json``; returns both."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        js = out_dir / f"{stem}.json"
        js.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        return plot_explanation(self, out_dir / f"{stem}.png"), js


def explain(
    detector: Any, image: ImageLike, rgb: bool = False, conf: float | None = None
) -> Explanation:
    """Run ``detector`` (a :class:`detkit.Detector` holding a PyTorch grid or SSD model; an
    export: ``TypeError``) on one image (as :meth:`detkit.Detector.predict` takes it) and explain
    every detection."""
    from detkit.inference.inputs import to_rgb

    model = detector.model
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "decode"):
        raise TypeError("explain needs a PyTorch checkpoint (an exported graph hides its grid)")
    inp, info = letterbox_image(to_rgb(image, rgb), detector.img_size)
    s = inp.shape[0]
    x = images_to_float(torch.from_numpy(inp).permute(2, 0, 1)[None].to(detector.device))
    priors = detector.priors(s, s)
    threshold = detector.conf if conf is None else conf
    with torch.inference_mode():
        decoded = model.decode(model(x), priors)
        ((found, trace),) = postprocess(*decoded, threshold, detector.iou, detector.max_det,
                                        agnostic=detector.agnostic, trace=True)  # fmt: skip
    boxes, c, p = (t[0].cpu() for t in decoded)
    scores = class_scores(c, p)
    kept = list(zip(trace.kept.tolist(), found.labels.tolist(), found.scores.tolist(), strict=True))
    suppressed = zip(*(t.tolist() for t in trace[1:]), strict=True)
    sizes = model.feature_sizes(s, s)
    cells = [h * w for h, w in sizes]  # rows are level-major
    per_cell = len(priors) // sum(cells)
    starts = np.cumsum([0] + [n * per_cell for n in cells])
    kind = model.prior_format
    predicted = sorted({k for _, k, _ in kept}) or list(range(scores.shape[1]))
    levels = []
    for lv, (h, w) in enumerate(sizes):
        rows = slice(int(starts[lv]), int(starts[lv + 1]))
        levels.append(
            {
                "stride": s / h,
                "grid": (h, w),
                "priors_per_cell": per_cell,
                "c": c[rows].reshape(h, w, per_cell).amax(-1).numpy(),
                "cp": scores[rows][:, predicted].amax(-1).reshape(h, w, per_cell).amax(-1).numpy(),
            }
        )
    names = list(detector.class_names)
    orig = info.to_orig(boxes[[n for n, _, _ in kept]]).numpy() if kept else np.zeros((0, 4))
    out = Explanation(inp, info, names, kind, levels, threshold, detector.iou, detector.max_det)
    for i, (n, k, sc) in enumerate(kept):
        lv = int(np.searchsorted(starts, n, side="right") - 1)
        h, w = sizes[lv]
        cell = (n - int(starts[lv])) // per_cell
        row = {
            "class": names[k],
            "label": k,
            "score": round(sc, 6),
            "c": round(float(c[n]), 6),
            "p": round(float(p[n, k]), 6),
            "box": [round(float(v), 2) for v in boxes[n]],
            "box_orig": [round(float(v), 2) for v in orig[i]],
            "prior_index": n,
            "level": lv,
            "stride": s / h,
            "cell": [cell % w, cell // w],
        }
        if kind == "grid":
            row["anchor"] = [round(float(v), 2) for v in priors[n, 3:5]]
        else:
            cx, cy, bw, bh = (float(v) for v in priors[n])
            row["default_box"] = [
                round(v, 2) for v in (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
            ]
        out.kept.append(row)
    for n, k, sc, by, v in suppressed:
        out.suppressed.append(
            {
                "class": names[k],
                "label": k,
                "score": round(sc, 6),
                "box": [round(float(x), 2) for x in boxes[n]],
                "prior_index": n,
                "by": by,
                "iou": round(v, 6),
            }
        )
    return out


# -- the picture ------------------------------------------------------------------------
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
    """Write the picture to ``path``: kept boxes with cell and prior, the NMS trace, heatmaps."""
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

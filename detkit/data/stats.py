"""Dataset statistics and pictures for ``check-data``: classes, box sizes, augmentations, from the
checked index (no image decoded); the augmentation grid draws real training items. Figures use
matplotlib's object API on an Agg canvas (no pyplot global state)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from detkit.core.visualize import class_color, draw_boxes, save_figure, save_image
from detkit.data.index import split_targets

if TYPE_CHECKING:
    from collections.abc import Callable

    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

    from detkit.core.protocols import DetectionSplit
    from detkit.data.dataset import DetectionDataset

SIZE_BUCKETS = (32.0, 96.0)
"""COCO's small / medium / large limits on ``sqrt(box area)``, orig px."""
_QUANTILES = ("min", "p5", "p50", "p95", "max")


def dataset_statistics(source: DetectionSplit) -> dict[str, Any]:
    """Counts and box-size statistics of a reader, from its index only: ``images``,
    ``negatives``, ``boxes``, ``per_class`` (name -> boxes, images), ``boxes_per_image`` (mean,
    max), percentiles ``{min, p5, p50, p95, max}`` of image and box width and height (px) and
    ``aspect_ratio`` (w / h), ``size_buckets`` (COCO limits), and for the plots ``_wh`` (float64
    ``[N, 2]`` box sizes) and ``_centres`` (``[N, 2]`` fractions of the image's width, height)."""
    names = list(source.class_names)
    boxes, labels, ends, sizes = split_targets(source)
    per_image = np.diff(ends, prepend=0)
    counts = np.bincount(labels, minlength=len(names))
    owner = np.repeat(np.arange(len(ends)), per_image)
    pairs = np.unique(owner * len(names) + labels) if len(labels) else np.zeros(0, np.int64)
    images_with = np.bincount(pairs % max(len(names), 1), minlength=len(names))
    wh_a = (boxes[:, 2:] - boxes[:, :2]).astype(np.float64)
    hw = sizes.astype(np.float64).reshape(-1, 2)
    side = np.sqrt(wh_a.prod(axis=1))
    hw_owner = np.maximum(hw[owner], 1.0)
    small, medium = SIZE_BUCKETS
    return {
        "images": len(source),
        "negatives": int((per_image == 0).sum()),
        "boxes": int(counts.sum()),
        "per_class": {
            n: {"boxes": int(c), "images": int(m)}
            for n, c, m in zip(names, counts, images_with, strict=True)
        },
        "boxes_per_image": {
            "mean": float(np.mean(per_image)) if len(per_image) else 0.0,
            "max": int(per_image.max(initial=0)),
        },
        "image_width": _percentiles(hw[:, 1]),
        "image_height": _percentiles(hw[:, 0]),
        "box_width": _percentiles(wh_a[:, 0]),
        "box_height": _percentiles(wh_a[:, 1]),
        "aspect_ratio": _percentiles(wh_a[:, 0] / np.maximum(wh_a[:, 1], 1e-9)),
        "size_buckets": {
            "small": int((side < small).sum()),
            "medium": int(((side >= small) & (side < medium)).sum()),
            "large": int((side >= medium).sum()),
        },
        "_wh": wh_a,
        "_centres": (boxes[:, :2] + boxes[:, 2:]).astype(np.float64) / 2 / hw_owner[:, ::-1],
    }


def _percentiles(values: np.ndarray) -> dict[str, float]:
    q = np.percentile(values, [0, 5, 50, 95, 100]) if len(values) else [math.nan] * 5
    return dict(zip(_QUANTILES, map(float, q), strict=True))


def format_statistics(stats: dict[str, Any], title: str) -> str:
    """The statistics of :func:`dataset_statistics` as plain text."""
    lines = [
        f"{title}: {stats['images']} images, {stats['negatives']} negatives, "
        f"{stats['boxes']} boxes ({stats['boxes_per_image']['mean']:.2f} per image, "
        f"max {stats['boxes_per_image']['max']})",
        f"  {'class':<24} {'boxes':>8} {'images':>8} {'share':>7}",
    ]
    total = max(stats["boxes"], 1)
    for name, c in stats["per_class"].items():
        share = 100.0 * c["boxes"] / total
        lines.append(f"  {name:<24} {c['boxes']:>8} {c['images']:>8} {share:>6.1f}%")
    lines.append(f"  {'percentiles':<24} {'min':>8} {'5%':>8} {'50%':>8} {'95%':>8} {'max':>8}")
    for key in ("image_width", "image_height", "box_width", "box_height", "aspect_ratio"):
        row = " ".join(f"{stats[key][k]:>8.2f}" for k in _QUANTILES)
        lines.append(
            f"  {key.replace('_', ' ') + (' (w/h)' if key == 'aspect_ratio' else ' px'):<24} {row}"
        )
    b = stats["size_buckets"]
    lines.append(
        f"  box sizes (COCO limits 32/96 px): {b['small']} small, {b['medium']} medium, "
        f"{b['large']} large"
    )
    return "\n".join(lines)


def _canvas(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_classes(stats: dict[str, Any], title: str, path: str | Path) -> Path:
    """Bar chart of boxes per class (and images per class) saved as a PNG; returns ``path``."""
    fig = _canvas(max(6.0, 0.35 * len(stats["per_class"]) + 2), 4.5)
    _class_bars(fig.add_subplot(), stats)
    fig.axes[0].set_title(_headline(stats, title))
    return save_figure(fig, path)


def _headline(stats: dict[str, Any], title: str) -> str:
    return f"{title}: {stats['boxes']} boxes in {stats['images']} images ({stats['negatives']} negatives)"


def _class_bars(ax: Axes, stats: dict[str, Any]) -> None:
    """Boxes and images per class as paired bars in the class colours."""
    names = list(stats["per_class"])
    boxes = [c["boxes"] for c in stats["per_class"].values()]
    images = [c["images"] for c in stats["per_class"].values()]
    x = np.arange(len(names))
    colours = [np.array(class_color(i)) / 255 for i in range(len(names))]
    ax.bar(x - 0.2, boxes, 0.4, color=colours, edgecolor="k", linewidth=0.5, label="boxes")
    ax.bar(x + 0.2, images, 0.4, color=colours, alpha=0.4, hatch="//", label="images with it")
    many = len(names) > 8
    ax.set_xticks(x, names, rotation=45 if many else 0, ha="right" if many else "center")
    ax.set_ylabel("count")
    ax.set_ylim(0, 1.2 * max(boxes, default=0) or 1)  # room for the legend above the bars
    legend = ax.legend(loc="upper right")
    for handle in legend.legend_handles:
        handle.set_facecolor("0.6")


def plot_box_sizes(stats: dict[str, Any], title: str, path: str | Path) -> Path:
    """Box width vs height, size and aspect-ratio histograms in one PNG; returns ``path``."""
    wh = stats["_wh"]
    fig = _canvas(15, 4.5)
    a, b, c = fig.subplots(1, 3)
    _width_height(fig, a, wh)
    if len(wh):
        side = np.sqrt(wh.prod(axis=1))
        b.hist(side, bins=np.geomspace(max(side.min(), 1.0) / 1.1, side.max() * 1.1, 40))
        for limit in SIZE_BUCKETS:
            b.axvline(limit, color="k", linestyle="--", linewidth=1)
        ratio = np.clip(wh[:, 0] / np.maximum(wh[:, 1], 1e-9), 1e-2, 1e2)
        c.hist(ratio, bins=np.geomspace(ratio.min() / 1.1, ratio.max() * 1.1, 40), color="C1")
        for ax in (b, c):
            _log_axis(ax.xaxis, ax.set_xscale)
    b.set(xlabel="sqrt(area) px (dashed: COCO 32 / 96)", ylabel="boxes", title="box size")
    c.set(xlabel="aspect ratio w / h", ylabel="boxes", title="aspect ratio")
    fig.suptitle(f"{title}: {len(wh)} boxes")
    return save_figure(fig, path)


def _width_height(fig: Figure, ax: Axes, wh: np.ndarray) -> None:
    """Box width against height (orig px), a log-log 2D histogram with the square diagonal."""
    if len(wh):
        lo, hi = max(float(wh.min()), 1.0) / 1.2, max(float(wh.max()), 2.0) * 1.2
        bins = np.geomspace(lo, hi, 40)
        h2 = ax.hist2d(wh[:, 0], wh[:, 1], bins=[bins, bins], cmap="viridis", cmin=1)
        fig.colorbar(h2[3], ax=ax, label="boxes")
        ax.plot([lo, hi], [lo, hi], color="0.7", linewidth=0.8, zorder=0)
        _log_axis(ax.xaxis, ax.set_xscale)
        _log_axis(ax.yaxis, ax.set_yscale)
    ax.set(xlabel="box width (orig px)", ylabel="box height (orig px)", title="width vs height")


def _log_axis(axis: Axis, set_scale: Callable[[str], object]) -> None:
    set_scale("log")
    axis.set_major_formatter(_plain_formatter())
    axis.set_minor_formatter(_plain_formatter(minor=True))


def plot_labels(stats: dict[str, Any], title: str, path: str | Path) -> Path:
    """The training labels at a glance in one PNG (a run's ``labels.png``): boxes and images per
    class, box width against height, where box centres fall in the image; returns ``path``."""
    fig = _canvas(max(16.0, 0.35 * len(stats["per_class"]) + 11), 4.5)
    wide = max(1.0, 0.1 * len(stats["per_class"]))  # many classes: a wider bar chart
    bars, sizes, centres = fig.subplots(1, 3, gridspec_kw={"width_ratios": [wide, 1, 1]})
    _class_bars(bars, stats)
    bars.set_title("boxes and images per class")
    _width_height(fig, sizes, stats["_wh"])
    xy = stats["_centres"]
    if len(xy):
        h2 = centres.hist2d(xy[:, 0], xy[:, 1], bins=20, range=[[0, 1], [0, 1]], cmin=1)
        fig.colorbar(h2[3], ax=centres, label="boxes")
    centres.set(xlim=(0, 1), ylim=(1, 0), aspect="equal", title="box centres in the image",
                xlabel="x / image width", ylabel="y / image height")  # fmt: skip
    fig.suptitle(_headline(stats, title))
    return save_figure(fig, path)


def _plain_formatter(minor: bool = False) -> Any:
    """Tick labels like ``20`` and ``0.5`` on log axes (instead of ``2 x 10^1``)."""
    from matplotlib.ticker import FuncFormatter

    def fmt(value: float, _pos: int) -> str:
        text = f"{value:.3g}"
        return "" if minor and text.lstrip("0.")[:1] not in ("2", "5") else text

    return FuncFormatter(fmt)


def augmentation_grid(
    dataset: DetectionDataset, count: int, class_names: list[str], path: str | Path, epoch: int = 0
) -> Path:
    """Draw ``count`` training items of ``epoch``, taken evenly across ``dataset``, with their
    boxes and class names into one PNG grid at ``path``; returns ``path``."""
    n = min(count, len(dataset))
    if n == 0:
        raise ValueError("the dataset is empty: nothing to draw")
    indices = np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist()
    tiles = [_draw_item(dataset[(epoch, i)], class_names) for i in indices]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    side = tiles[0].shape[0]
    grid = np.full((rows * side, cols * side, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * side : (r + 1) * side, c * side : (c + 1) * side] = tile
    return save_image(path, grid)


def _draw_item(item: dict[str, Any], class_names: list[str]) -> np.ndarray:
    """An item's image (RGB ``[S, S, 3]``) with its boxes (input px) and names drawn."""
    image = np.ascontiguousarray(item["image"].permute(1, 2, 0).numpy())
    labels = item["labels"].tolist()
    names = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in labels]
    colors = [class_color(c) for c in labels]
    scale = max(0.3, image.shape[0] / 800)
    image = draw_boxes(image, item["boxes"].numpy(), colors, names, thickness=1, font_scale=scale)
    cv2.rectangle(image, (0, 0), (image.shape[1] - 1, image.shape[0] - 1), (255, 255, 255), 1)
    return image

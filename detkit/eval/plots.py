"""Evaluation plots as PNG files: precision-recall curves and the confusion matrix.

Figures are built with ``matplotlib.figure.Figure`` and written by the Agg canvas directly, so
nothing touches pyplot's global state or the user's interactive backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detkit.eval.voc import VOCResult
from detkit.visualize import class_color

RECALL_GRID = np.linspace(0.0, 1.0, 101)


def interpolated_precision(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Precision envelope (best precision at recall ``>= r``) on :data:`RECALL_GRID`.

    Args:
        recall: ``[K]`` non-decreasing recall after each detection.
        precision: ``[K]`` precision after each detection.

    Returns:
        ``[101]`` precision at recall 0, 0.01, ..., 1 (0 beyond the last recall reached).

    Example:
        >>> interpolated_precision(np.array([0.5, 1.0]), np.array([1.0, 0.5]))[[0, 50, 51, 100]]
        array([1. , 1. , 0.5, 0.5])
    """
    if len(recall) == 0:
        return np.zeros_like(RECALL_GRID)
    envelope = np.maximum.accumulate(np.asarray(precision, np.float64)[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_GRID, side="left")
    out = np.zeros_like(RECALL_GRID)
    inside = idx < len(recall)
    out[inside] = envelope[idx[inside]]
    return out


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=fig.dpi)
    return path


def plot_pr_curves(voc: VOCResult, class_names: list[str], path: str | Path) -> Path:
    """One precision-recall curve per class at the VOC IoU, plus the mean over classes.

    Curves are the raw (recall, precision) points after each detection, in score order (no
    point is added at recall 0, so a class whose best detection is wrong starts low); the legend
    gives each class's VOC2010+ AP. The bold line is the mean of the per-class precision
    envelopes over the classes that have ground truth (its area is the mAP up to the 101-point
    grid).

    Args:
        voc: from :func:`detkit.eval.voc.voc_evaluate`.
        class_names: names by label.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    fig = Figure(figsize=(7.5, 6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    envelopes = []
    for c, name in enumerate(class_names):
        if voc.num_gt[c] == 0:
            continue
        rec, prec = voc.recall[c], voc.precision[c]
        color = np.array(class_color(c)) / 255.0
        label = f"{name}  {voc.ap[c]:.3f}"
        ax.plot(rec, prec, color=color, lw=1.2, label=label)
        envelopes.append(interpolated_precision(rec, prec))
    if envelopes:
        mean = np.mean(envelopes, axis=0)
        ax.plot(RECALL_GRID, mean, color="black", lw=2.5, label=f"all classes  mAP50 {voc.map:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax.set_title(f"Precision-recall at IoU > {voc.iou_threshold:g}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, frameon=True)
    return _save(fig, path)


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: list[str],
    path: str | Path,
    conf: float | None = None,
    iou: float | None = None,
) -> Path:
    """The detection confusion matrix, each column normalised to 1, counts written in cells.

    Args:
        matrix: ``[C + 1, C + 1]`` counts ``matrix[predicted, true]``, last index background
            (from :func:`detkit.eval.confusion.confusion_matrix`).
        class_names: the C names by label.
        path: the PNG to write.
        conf: the score threshold used (shown in the title).
        iou: the matching IoU used (shown in the title).

    Returns:
        ``path``.
    """
    names = [*class_names, "background"]
    n = len(names)
    totals = matrix.sum(axis=0, keepdims=True)
    norm = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    side = min(4.0 + 0.45 * n, 24.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class (column)")
    if n <= 30:  # beyond that the numbers no longer fit
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    text = f"{norm[i, j]:.2f}\n{matrix[i, j]}"
                    ax.text(j, i, text, ha="center", va="center", color=color, fontsize=7)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="true", ylabel="predicted")
    details = ", ".join(
        s
        for s in (
            f"score >= {conf:g}" if conf is not None else "",
            f"IoU >= {iou:g}" if iou is not None else "",
        )
        if s
    )
    ax.set_title("Confusion matrix" + (f" ({details})" if details else ""))
    return _save(fig, path)

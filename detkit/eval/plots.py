"""Evaluation plots as PNG files: PR curves, confusion matrix, error breakdown, thresholds; built
on ``matplotlib.figure.Figure`` (no pyplot state) and written by :func:`save_figure`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from detkit.core.visualize import class_color, save_figure
from detkit.eval.errors import ERROR_COLORS, ERROR_TYPES, ErrorBreakdown
from detkit.eval.thresholds import ThresholdReport

RECALL_GRID = np.linspace(0.0, 1.0, 101)  # pycocotools' recall thresholds


def pr_figure(curves: list[np.ndarray | None], class_names: list[str], map50: float) -> Figure:
    """COCO precision-recall curves at IoU >= 0.5 of each label (``[101]`` precision on
    :data:`RECALL_GRID`, its area the AP50; None: not drawn) and their mean (area ``map50``)."""
    fig = Figure(figsize=(7.5, 6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    drawn = []
    for c, (name, curve) in enumerate(zip(class_names, curves, strict=True)):
        if curve is None:
            continue
        color = np.array(class_color(c)) / 255.0
        ax.plot(RECALL_GRID, curve, color=color, lw=1.2, label=f"{name}  AP50 {curve.mean():.3f}")
        drawn.append(curve)
    if drawn:
        mean = np.mean(drawn, axis=0)
        ax.plot(RECALL_GRID, mean, color="black", lw=2.5, label=f"all classes  mAP50 {map50:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax.set_title("Precision-recall at IoU >= 0.5 (COCO AP50: area under each curve)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, frameon=True)
    return fig


def plot_pr_curves(
    curves: list[np.ndarray | None], class_names: list[str], map50: float, path: str | Path
) -> Path:
    """Write :func:`pr_figure` to ``path`` (a PNG) and return ``path``."""
    return save_figure(pr_figure(curves, class_names, map50), path)


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: list[str],
    path: str | Path,
    conf: float | None = None,
    iou: float | None = None,
) -> Path:
    """Write the confusion matrix ``[C + 1, C + 1]`` ``matrix[predicted, true]`` (background
    last) to the PNG ``path``, each column normalised to 1, counts in the cells; ``conf`` and
    ``iou`` (the thresholds it was counted at) go in the title."""
    names = [*class_names, "background"]
    n = len(names)
    totals = matrix.sum(axis=0, keepdims=True)
    norm = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    side = min(4.0 + 0.45 * n, 24.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class (column)")
    for i, j in np.argwhere(matrix) if n <= 30 else []:  # beyond 30 the numbers do not fit
        color = "white" if norm[i, j] > 0.5 else "black"
        text = f"{norm[i, j]:.2f}\n{matrix[i, j]}"
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize=7)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="true", ylabel="predicted")
    details = ", ".join(
        f"{what} >= {v:g}" for what, v in (("score", conf), ("IoU", iou)) if v is not None
    )
    ax.set_title("Confusion matrix" + (f" ({details})" if details else ""))
    return save_figure(fig, path)


def plot_errors(errors: ErrorBreakdown, path: str | Path) -> Path:
    """Write the error breakdown to the PNG ``path``: dAP per type (left) and the count per type
    by object size (right)."""
    types = list(ERROR_TYPES)[::-1]  # first type on top
    colors = [np.array(ERROR_COLORS[t]) / 255.0 for t in types]
    y = np.arange(len(types))
    avg = len(errors.iou_thresholds) > 1
    fig = Figure(figsize=(11, 4.6), dpi=110, layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=[1.25, 1])
    height = 0.38 if avg else 0.6
    dap = [errors.dap[t] for t in types]
    ax.barh(y + (height / 2 if avg else 0), dap, height, color=colors, label="dAP50")
    if avg:
        dap_avg = [errors.dap_avg[t] for t in types]
        ax.barh(y - height / 2, dap_avg, height, color=colors, alpha=0.45, label="dAP50-95")
    top = max([*dap, *(errors.dap_avg.values() if avg else []), 1e-3])
    for i, v in enumerate(dap):
        ax.text(v + top * 0.01, y[i] + (height / 2 if avg else 0), f"{v:+.3f}", va="center")
    ax.set_xlim(0, top * 1.25)
    ax.set_xlabel("mAP gained if this error type alone were fixed (dAP)")
    ax.set_title(
        f"mAP50 {errors.map_base:.3f}: gap {1 - errors.map_base:.3f} "
        f"(all fixed: {errors.fixed_all:.3f})"
    )
    if avg:
        ax.legend(loc="lower right", fontsize=9)
    left = np.zeros(len(types))
    shades = {"small": 0.4, "medium": 0.7, "large": 1.0}
    for size, shade in shades.items():
        n = np.array([errors.per_size.get(size, {}).get("counts", {}).get(t, 0) for t in types])
        bx.barh(y, n, 0.6, left=left, color=[c * shade + (1 - shade) for c in colors],
                edgecolor="black", lw=0.4, label=size)  # fmt: skip
        left += n
    for i, t in enumerate(types):
        bx.text(left[i], y[i], f" {errors.counts[t]}", va="center")
    bx.set_xlim(0, max(left.max(), 1) * 1.18)
    bx.set_xlabel(f"errors at IoU {errors.iou_thresholds[0]:g} (pale: small, full: large)")
    bx.set_title("How many, by object size")
    bx.legend(loc="lower right", fontsize=9)
    for a in (ax, bx):
        a.set_yticks(y, types, fontsize=11)
        a.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_pr_f1(report: ThresholdReport, path: str | Path) -> Path:
    """Write precision, recall and F1 against the score threshold (IoU 0.5) to the PNG ``path``:
    thin lines the classes, bold all pooled, a dot at each F1-optimal threshold."""
    fig = Figure(figsize=(13, 4.4), dpi=110, layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    names = {"all": "all classes", **dict(enumerate(report.class_names))}
    for key, curve in report.curves.items():
        bold = key == "all"
        color = "black" if bold else np.array(class_color(int(key))) / 255.0
        for ax, what in zip(axes, ("precision", "recall", "f1"), strict=True):
            ax.plot(report.grid, curve[what], color=color, lw=2.5 if bold else 1.2,
                    label=names[key] if what == "f1" else None)  # fmt: skip
        if (op := report.best.get(key)) is not None:
            axes[2].plot(op.conf, op.f1, "o", color=color, ms=7 if bold else 5)
    best = report.best.get("all")
    titles = ["Precision (score > threshold)", "Recall", "F1"]
    if best is not None:
        titles[2] = f"F1: best {best.f1:.3f} at threshold {best.conf:.3f}"
        for ax in axes:
            ax.axvline(best.conf, color="black", ls=":", lw=1)
    for ax, title in zip(axes, titles, strict=True):
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold (conf)", title=title)
        ax.grid(alpha=0.3)
    axes[2].legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)


def plot_calibration(report: ThresholdReport, path: str | Path) -> Path:
    """Write the reliability diagram to the PNG ``path``: per score bin, the fraction of true
    positives (IoU 0.5, bars) against the mean score (red dots), the detections per bin below
    and the expected calibration error (ECE) in the title."""
    fig = Figure(figsize=(6.5, 6.8), dpi=110, layout="constrained")
    ax, bx = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    left, width = report.bins[:-1], np.diff(report.bins)
    ax.bar(left, np.nan_to_num(report.bin_acc), width, align="edge", color="tab:blue",
           edgecolor="black", lw=0.5, label="fraction correct in the bin")  # fmt: skip
    ax.plot(left + width / 2, report.bin_conf, "o-", color="tab:red", ms=5,
            label="mean score in the bin")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ece = f"{report.ece:.3f}" if math.isfinite(report.ece) else "n/a"
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction correct (IoU >= 0.5)")
    ax.set_title(f"Score calibration: ECE {ece} over {int(report.bin_count.sum())} detections")
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(alpha=0.3)
    bx.bar(left, np.maximum(report.bin_count, 0.8), width, align="edge", color="grey",
           edgecolor="black", lw=0.5)  # fmt: skip
    bx.set_yscale("log")
    bx.set(xlabel="score c·p", ylabel="detections")
    bx.grid(alpha=0.3)
    return save_figure(fig, path)

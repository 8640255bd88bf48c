"""Score thresholds a user can deploy, from pycocotools' matching at IoU 0.5 (as mAP50): the
precision, recall and F1 of the detections with score ``> conf``, per class and pooled, the
F1-optimal ``conf``, and the calibration (expected calibration error over ten score bins)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from detkit.eval.coco import DetTable, Matching, matches_at, objects_per_category

THRESHOLD_GRID = np.linspace(0.0, 1.0, 201)


@dataclass
class Operating:
    """Precision, recall and F1 of one class (or all) when keeping scores ``> conf``."""

    conf: float
    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 6) for k, v in vars(self).items()}


@dataclass
class ThresholdReport:
    """``curves``: ``"all"`` or a label -> ``{"precision", "recall", "f1"}``, each ``[T]`` at
    score ``> grid``; ``best``: ``"all"`` or a label with objects -> the F1-optimal point;
    calibration: ``bins`` ``[B + 1]`` edges, per bin the mean score ``bin_conf``, the fraction of
    true positives ``bin_acc`` (``NaN`` when empty) and ``bin_count``."""

    grid: np.ndarray
    curves: dict[Any, dict[str, np.ndarray]]
    best: dict[Any, Operating]
    bins: np.ndarray
    bin_conf: np.ndarray
    bin_acc: np.ndarray
    bin_count: np.ndarray
    ece: float
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: best thresholds (overall and per class by name) and calibration."""
        per_class = {self.class_names[k]: op.to_dict() for k, op in self.best.items() if k != "all"}
        return {
            "iou": 0.5,
            "best_f1": self.best["all"].to_dict() if "all" in self.best else None,
            "best_f1_per_class": per_class,
            "ece": round(self.ece, 6) if math.isfinite(self.ece) else None,
            "calibration": {
                "bin_edges": self.bins.round(4).tolist(),
                "confidence": [None if math.isnan(v) else round(v, 6) for v in self.bin_conf],
                "accuracy": [None if math.isnan(v) else round(v, 6) for v in self.bin_acc],
                "count": self.bin_count.tolist(),
            },
        }


def _curve(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> tuple[dict, Operating | None]:
    """P/R/F1 on :data:`THRESHOLD_GRID` and the F1-optimal point of detections ``scores [D]``,
    ``tp [D]`` bool, against ``num_gt`` objects. The best ``conf`` sits half-way between the last
    score kept and the next, so that ``conf=best`` keeps exactly the detections counted."""
    order = np.argsort(-scores, kind="stable")
    s, hit = scores[order], tp[order].astype(np.float64)
    tps, kept = np.cumsum(hit), np.arange(1, len(s) + 1)
    prec = tps / np.maximum(kept, 1)
    rec = tps / max(num_gt, 1)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(prec), where=prec + rec > 0)
    n = np.searchsorted(-s, -THRESHOLD_GRID, side="left")  # detections with score > threshold
    n_idx = np.maximum(n - 1, 0)
    curves = {
        "precision": np.where(n > 0, prec[n_idx] if len(s) else 0.0, np.nan),  # nothing kept
        "recall": np.where(n > 0, rec[n_idx] if len(s) else 0.0, 0.0),
        "f1": np.where(n > 0, f1[n_idx] if len(s) else 0.0, 0.0),
    }
    if num_gt == 0 or not len(s):
        return curves, None
    # only the last detection of a run of equal scores is a threshold one can set
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    k = last[np.argmax(f1[last])]
    below = s[k + 1] if k + 1 < len(s) else 0.0
    return curves, Operating(float((s[k] + below) / 2), prec[k], rec[k], f1[k])


def threshold_report(
    scores: np.ndarray,
    labels: np.ndarray,
    tp: np.ndarray,
    num_gt: np.ndarray,
    class_names: list[str],
    bins: int = 10,
) -> ThresholdReport:
    """Precision / recall / F1 against the threshold, the best thresholds and the calibration
    (``bins`` over [0, 1]) of the scored detections' ``scores [D]``, contiguous ``labels [D]``
    and ``tp [D]`` (bool, at IoU 0.5), with ``num_gt [C]`` non-crowd objects per label."""
    curves, best = {}, {}
    subsets = [("all", slice(None), num_gt.sum())]
    subsets += [(k, labels == k, num_gt[k]) for k in range(len(class_names))]
    for key, mine, objects in subsets:
        curves[key], op = _curve(scores[mine], tp[mine], int(objects))
        if op is not None:
            best[key] = op
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        conf = np.bincount(which, weights=scores, minlength=bins) / count
        acc = np.bincount(which, weights=tp.astype(np.float64), minlength=bins) / count
    filled, total = count > 0, count.sum()
    gaps = count[filled] / max(total, 1) * np.abs(acc[filled] - conf[filled])
    ece = float(np.sum(gaps)) if total else math.nan
    return ThresholdReport(
        THRESHOLD_GRID, curves, best, edges, conf, acc, count, ece, list(class_names)
    )


def thresholds_from_eval(
    matching: Matching,
    detections: DetTable,
    gt: COCO,
    cat_ids: list[int] | None,
    class_names: list[str],
) -> ThresholdReport:
    """:func:`threshold_report` of ``matching`` (``CocoScores.matching`` of ``detections``) at
    IoU 0.5, against the objects of ``gt``; ``cat_ids``: label -> category id (None: identity)."""
    outcome = matches_at(matching, 0.5, len(detections))
    scored = outcome >= 0
    cats = list(cat_ids) if cat_ids is not None else list(range(len(class_names)))
    order = np.argsort(cats)
    known = np.asarray(cats, np.int64)[order]
    found = detections.category_ids[scored]
    pos = np.minimum(np.searchsorted(known, found), max(len(known) - 1, 0))
    labels = np.where(known[pos] == found, order[pos], -1) if len(known) else found * 0 - 1
    per_cat = objects_per_category(gt)
    num_gt = np.array([per_cat.get(c, 0) for c in cats])
    tp = outcome[scored] == 1
    return threshold_report(detections.scores[scored], labels, tp, num_gt, class_names)

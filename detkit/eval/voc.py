"""Pascal VOC mAP@0.5, VOC2007 11-point and VOC2010+ all-point, matched as the devkit
(``VOCevaldet.m``): IoU strictly above the threshold, ``difficult`` objects neither TP nor FP,
duplicates FP; boxes are continuous ``xyxy`` orig px, so IoU has no ``+ 1`` term."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detkit.boxes import box_iou
from detkit.core.io import json_float

ImageDets = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Detections of one image: boxes ``[K, 4]`` xyxy orig px, scores ``[K]``, labels ``[K]`` int."""

ImageGT = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Ground truth of one image: boxes ``[G, 4]`` xyxy orig px, labels ``[G]`` int, difficult
``[G]`` bool (ignored objects: VOC ``difficult``, COCO ``iscrowd``)."""


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP in [0, 1] (0 for an empty curve) of ``[K]`` recall (non-decreasing) and precision after
    each detection in score order: VOC2007 11-point interpolation (mean over ``t = 0, 0.1, ...,
    1`` of the best precision at recall ``>= t``) or the VOC2010+ area under the right-to-left
    maximum precision envelope.

    Example:
        >>> rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
        >>> round(voc_ap(rec, prec), 6)  # 0.5 * 1 + 0.5 * 2/3
        0.833333
        >>> round(voc_ap(rec, prec, use_07_metric=True), 6)  # (6 * 1 + 5 * 2/3) / 11
        0.848485
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.size == 0:
        return 0.0
    if use_07_metric:  # precision >= 0, so an empty max is the 0 it should be
        # t = i / 10 exactly: np.arange(0, 1.1, 0.1) (py-faster-rcnn) yields 0.30000000000000004
        # and 0.6000000000000001, which a recall of exactly 0.3 or 0.6 would fail to reach.
        best = [precision[recall >= t].max(initial=0.0) for t in np.arange(11) / 10.0]
        return sum(map(float, best)) / 11.0
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: best precision at recall >= r
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


@dataclass
class VOCResult:
    """VOC metrics at ``iou_threshold``, per class: ``ap`` all-point and ``ap07`` 11-point AP
    (``NaN`` without ground truth), ``num_gt`` non-difficult objects, ``recall`` and
    ``precision`` ``[K_c]`` after each detection in score order."""

    ap: np.ndarray
    ap07: np.ndarray
    num_gt: np.ndarray
    recall: list[np.ndarray] = field(repr=False)
    precision: list[np.ndarray] = field(repr=False)
    iou_threshold: float = 0.5

    @property
    def map(self) -> float:
        """VOC2010+ mAP: mean all-point AP over the classes with ground truth."""
        return _nanmean(self.ap)

    @property
    def map07(self) -> float:
        """VOC2007 mAP: mean 11-point AP over the classes with ground truth."""
        return _nanmean(self.ap07)

    def to_dict(self, class_names: list[str] | None = None) -> dict[str, Any]:
        """Plain JSON-safe numbers (``NaN`` as ``None``)."""
        names = class_names or [str(i) for i in range(len(self.ap))]
        return {
            "iou_threshold": self.iou_threshold,
            "mAP50": json_float(self.map),
            "mAP50_voc07": json_float(self.map07),
            "per_class": {
                n: {"AP50": json_float(a), "AP50_voc07": json_float(a07), "num_gt": int(g)}
                for n, a, a07, g in zip(names, self.ap, self.ap07, self.num_gt, strict=True)
            },
        }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def match_image(
    det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_difficult: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """``[K]`` int8 TP (1), FP (0) or ignored (-1) for one image and class: detections ``[K, 4]``
    sorted by decreasing score against objects ``[G, 4]`` (both xyxy orig px), ``difficult
    [G]``; a match needs IoU strictly above ``iou_threshold``."""
    flags = np.zeros(len(det_boxes), dtype=np.int8)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return flags
    iou = box_iou(det_boxes.astype(np.float64), gt_boxes.astype(np.float64))
    best = iou.argmax(axis=1)
    best_iou = iou[np.arange(len(det_boxes)), best]
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for k in np.flatnonzero(best_iou > iou_threshold):  # score order: the first match wins
        g = best[k]
        if gt_difficult[g]:
            flags[k] = -1
        elif not taken[g]:
            flags[k], taken[g] = 1, True
    return flags


def voc_evaluate(
    detections: Mapping[Any, ImageDets],
    ground_truth: Mapping[Any, ImageGT],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> VOCResult:
    """VOC AP of every class (labels ``0..C-1``, both forms) over a set of images:
    ``detections`` image id -> ``(boxes [K, 4] xyxy orig px, scores [K], labels [K])`` (an image
    missing has none), ``ground_truth`` image id -> ``(boxes [G, 4] xyxy orig px, labels [G],
    difficult [G])`` for every evaluated image. KeyError: a detection's image has none."""
    flags: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    num_gt = np.zeros(num_classes, dtype=np.int64)
    for _, gt_labels, difficult in ground_truth.values():
        np.add.at(num_gt, np.asarray(gt_labels, dtype=np.int64)[~np.asarray(difficult, bool)], 1)
    for image_id, (boxes, det_scores, labels) in detections.items():
        if image_id not in ground_truth:
            raise KeyError(f"detections for image {image_id!r}, which has no ground truth entry")
        gt_boxes, gt_labels, difficult = ground_truth[image_id]
        gt_labels, difficult = np.asarray(gt_labels), np.asarray(difficult, dtype=bool)
        boxes, det_scores, labels = map(np.asarray, (boxes, det_scores, labels))
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            idx = idx[np.argsort(-det_scores[idx], kind="stable")]
            g = gt_labels == c
            flag = match_image(boxes[idx], np.asarray(gt_boxes)[g], difficult[g], iou_threshold)
            flags[c].append(flag)
            scores[c].append(det_scores[idx])
    ap, ap07 = np.full(num_classes, math.nan), np.full(num_classes, math.nan)
    curves = [_curve(flags[c], scores[c], int(num_gt[c])) for c in range(num_classes)]
    for c, (rec, prec) in enumerate(curves):
        if num_gt[c] > 0:
            ap[c], ap07[c] = voc_ap(rec, prec), voc_ap(rec, prec, use_07_metric=True)
    recalls, precisions = [r for r, _ in curves], [p for _, p in curves]
    return VOCResult(ap, ap07, num_gt, recalls, precisions, iou_threshold)


def _curve(
    flags: list[np.ndarray], scores: list[np.ndarray], num_gt: int
) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each counted detection in stable (image order) score order."""
    if not flags:
        return np.zeros(0), np.zeros(0)
    f, s = np.concatenate(flags), np.concatenate(scores)
    f = f[np.argsort(-s, kind="stable")]
    f = f[f >= 0]  # detections of difficult objects count neither way
    tp = np.cumsum(f == 1)
    fp = np.cumsum(f == 0)
    recall = tp / num_gt if num_gt > 0 else np.zeros(len(f))
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall.astype(np.float64), precision.astype(np.float64)

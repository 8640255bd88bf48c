"""Detection confusion matrix ``[C + 1, C + 1]``, ``matrix[predicted, true]``, background last:
detections match objects of *any* class one-to-one by decreasing IoU; missed objects count in
the background row, false alarms in its column; ignored objects and their matches not at all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from detkit.boxes import box_iou
from detkit.core.deploy import CM_CONF, CM_IOU
from detkit.eval.voc import ImageDets, ImageGT


def greedy_match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``(det_index, gt_index)`` pairs matched one-to-one by decreasing IoU ``>= threshold`` in
    ``iou [D, G]`` (detections against ground truth).

    Example:
        >>> greedy_match(np.array([[0.9, 0.6], [0.8, 0.1]]), 0.5)
        (array([0]), array([0]))
    """
    d, g = np.nonzero(iou >= threshold)
    order = np.lexsort((g, d, -iou[d, g]))  # by IoU, ties by detection then gt index
    used_d, used_g, keep = set(), set(), []
    for k in order:
        if d[k] not in used_d and g[k] not in used_g:
            used_d.add(d[k])
            used_g.add(g[k])
            keep.append(k)
    keep_idx = np.asarray(keep, dtype=np.int64)
    return d[keep_idx], g[keep_idx]


def confusion_matrix(
    detections: Mapping[Any, ImageDets],
    ground_truth: Mapping[Any, ImageGT],
    num_classes: int,
    conf: float = CM_CONF,
    iou_threshold: float = CM_IOU,
) -> np.ndarray:
    """The int64 matrix of the module over the images of ``ground_truth`` (image id -> ``(boxes
    [G, 4] xyxy orig px, labels [G], ignore [G] bool)``), counting ``detections`` (image id ->
    ``(boxes [K, 4] xyxy orig px, scores [K], labels [K])``) with score ``>= conf``."""
    bg = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    for image_id, (gt_boxes, gt_labels, ignore) in ground_truth.items():
        boxes, scores, labels = (np.asarray(a) for a in detections.get(image_id, empty))
        keep = scores >= conf
        boxes, labels = boxes[keep].reshape(-1, 4), labels[keep].astype(np.int64)
        ignore = np.asarray(ignore, dtype=bool)
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels, dtype=np.int64)
        iou = box_iou(boxes.astype(np.float64), gt_boxes)
        det_idx, gt_idx = greedy_match(iou, iou_threshold)
        counted = ~ignore[gt_idx]
        np.add.at(matrix, (labels[det_idx[counted]], gt_labels[gt_idx[counted]]), 1)
        missed = ~np.isin(np.arange(len(gt_boxes)), gt_idx) & ~ignore
        np.add.at(matrix, (bg, gt_labels[missed]), 1)
        np.add.at(matrix, (labels[~np.isin(np.arange(len(boxes)), det_idx)], bg), 1)
    return matrix

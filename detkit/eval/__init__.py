"""Evaluation: COCO metrics through pycocotools, Pascal VOC AP, confusion matrix, plots."""

from __future__ import annotations

from detkit.eval.coco import (
    STAT_NAMES,
    CocoScores,
    coco_evaluate,
    ground_truth_by_image,
    load_coco_gt,
)
from detkit.eval.confusion import confusion_matrix
from detkit.eval.report import write_report
from detkit.eval.runner import EvalResult, evaluate_detector
from detkit.eval.voc import VOCResult, voc_ap, voc_evaluate

__all__ = [
    "STAT_NAMES",
    "CocoScores",
    "EvalResult",
    "VOCResult",
    "coco_evaluate",
    "confusion_matrix",
    "evaluate_detector",
    "ground_truth_by_image",
    "load_coco_gt",
    "voc_ap",
    "voc_evaluate",
    "write_report",
]

"""Evaluation: COCO metrics through pycocotools."""

from __future__ import annotations

from detkit.eval.coco import STAT_NAMES, EvalResult, coco_metrics, evaluate

__all__ = ["STAT_NAMES", "EvalResult", "coco_metrics", "evaluate"]

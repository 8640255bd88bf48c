"""Public box API: formats, IoU family, ``c * p`` scoring and NMS (hard, batched, soft, multiclass)
of ``xyxy`` px boxes as torch tensors (any device, float16/32/64) or numpy arrays (numpy in, numpy
out); half precision runs in float32, inputs are never modified, a bad shape is a ValueError."""

from __future__ import annotations

from detkit.boxes.coords import FORMATS, box_area, box_convert, clip_boxes, remove_small_boxes
from detkit.boxes.iou import box_iou, complete_box_iou, distance_box_iou, generalized_box_iou
from detkit.boxes.scoring import METHODS, batched_multiclass_nms, class_scores, multiclass_nms
from detkit.boxes.suppression import SOFT_METHODS, batched_nms, nms, soft_nms

__all__ = [
    "FORMATS",
    "METHODS",
    "SOFT_METHODS",
    "batched_multiclass_nms",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "class_scores",
    "clip_boxes",
    "complete_box_iou",
    "distance_box_iou",
    "generalized_box_iou",
    "multiclass_nms",
    "nms",
    "remove_small_boxes",
    "soft_nms",
]

"""Losses and target assignment; each model family's criterion follows
:class:`detkit.models.losses.base.Criterion`'s call contract."""

from __future__ import annotations

from detkit.models.losses.assign import (
    Assignment,
    assign_center_cell,
    assign_neighbors,
    match_default_boxes,
)
from detkit.models.losses.base import PARTS, Criterion, compare_initial_losses
from detkit.models.losses.functional import (
    binary_cross_entropy,
    cross_entropy,
    iou_loss,
    multiclass_hinge,
    sigmoid_focal_loss,
    smooth_l1,
    softmax_focal_loss,
)
from detkit.models.losses.ssd import SSDLoss
from detkit.models.losses.yolo import YOLOLoss

__all__ = [
    "PARTS",
    "Assignment",
    "Criterion",
    "SSDLoss",
    "YOLOLoss",
    "assign_center_cell",
    "assign_neighbors",
    "binary_cross_entropy",
    "compare_initial_losses",
    "cross_entropy",
    "iou_loss",
    "match_default_boxes",
    "multiclass_hinge",
    "sigmoid_focal_loss",
    "smooth_l1",
    "softmax_focal_loss",
]

"""Losses and target assignment for the detectors."""

from __future__ import annotations

from detkit.losses.assign import Assignment, assign_center_cell
from detkit.losses.functional import smooth_l1
from detkit.losses.yolo import YOLOLoss

__all__ = ["Assignment", "YOLOLoss", "assign_center_cell", "smooth_l1"]

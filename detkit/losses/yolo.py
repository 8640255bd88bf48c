"""The grid detector's criterion: smooth L1 on box encodings, CE on classes, BCE on confidence."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detkit.coder import GridCoder
from detkit.losses.assign import assign_center_cell
from detkit.losses.functional import smooth_l1


class YOLOLoss:
    """Loss for raw grid predictions, normalised by the number of positives.

    Args:
        num_classes: C.
        strides, anchors: the model's levels (see :class:`detkit.models.yolo.GridDetector`).
        box_weight, obj_weight, cls_weight: multipliers of the three parts.
        beta: smooth L1 transition point (in encoding units: cell fractions and log-scales).

    Call with ``raw [B, N, 5 + C]``, ``targets [M, 6]`` (batch_index, label, xyxy input px),
    ``priors [N, 5]`` and the per-level ``feature_sizes``; returns ``(total, parts)`` where
    ``total`` is a scalar to backpropagate and ``parts`` holds the detached box/obj/cls values.
    An image or batch with no objects gives zero box and class loss and a finite total.
    """

    def __init__(
        self,
        num_classes: int,
        strides: list[int],
        anchors: list[list[tuple[float, float]]],
        box_weight: float = 5.0,
        obj_weight: float = 1.0,
        cls_weight: float = 1.0,
        beta: float = 0.1,
    ) -> None:
        self.num_classes = num_classes
        self.strides = strides
        self.anchors = anchors
        self.weights = (box_weight, obj_weight, cls_weight)
        self.beta = beta
        self.coder = GridCoder()

    def __call__(
        self,
        raw: torch.Tensor,
        targets: torch.Tensor,
        priors: torch.Tensor,
        feature_sizes: list[tuple[int, int]],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raw = raw.float()
        a = assign_center_cell(targets, feature_sizes, self.strides, self.anchors)
        num_pos = max(a.num_pos, 1)

        obj_target = torch.zeros_like(raw[..., 4])
        obj_target[a.batch_idx, a.prior_idx] = 1.0
        obj = F.binary_cross_entropy_with_logits(raw[..., 4], obj_target, reduction="sum")

        pos = raw[a.batch_idx, a.prior_idx]  # [P, 5 + C]
        matched = targets[a.target_idx]
        encoded = self.coder.encode(matched[:, 2:6], priors[a.prior_idx])
        pred = torch.cat([pos[:, :2].sigmoid(), pos[:, 2:4]], dim=1)
        box = smooth_l1(pred, encoded, self.beta).sum()
        cls = F.cross_entropy(pos[:, 5:], matched[:, 1].long(), reduction="sum")

        wb, wo, wc = self.weights
        parts = torch.stack([box * wb, obj * wo, cls * wc]) / num_pos
        total = parts.sum()
        p = parts.detach().tolist()
        return total, {"box": p[0], "obj": p[1], "cls": p[2]}

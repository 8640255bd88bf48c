"""The grid detectors' criterion: a box loss on the positives, class loss on the positives,
objectness on every prior; each normalised by the number of positives."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from detkit.boxes.coder import GridCoder, grid_decode
from detkit.boxes.iou import aligned_iou
from detkit.models.losses import functional as L
from detkit.models.losses.assign import Assignment, assign_center_cell, assign_neighbors
from detkit.models.losses.base import Criterion
from detkit.models.yolo import grid_deltas

ASSIGNERS = ("center", "neighbors")
BOX_LOSSES = ("smooth_l1", *L.IOU_LOSSES)
CLS_LOSSES = ("ce", "focal", "hinge")
OBJ_LOSSES = ("bce", "focal")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} {value!r} unknown; choose one of {', '.join(choices)}")


class YOLOLoss(Criterion):
    """Loss for raw grid predictions ``[B, N, 5 + C]`` with ``priors [N, 5]`` (call contract:
    :class:`Criterion`); no objects give zero box and class loss. ``assigner``: ``"center"``
    (:func:`assign_center_cell`) or ``"neighbors"`` (:func:`assign_neighbors`, ``anchor_t``);
    ``box_loss``: ``"smooth_l1"`` on the grid encodings (``beta`` in cell fractions and
    log-scales) or an IoU-family loss on decoded boxes; ``obj_iou``: a positive's confidence
    target is ``(1 - obj_iou) + obj_iou * IoU(decoded box, object)`` (detached, clamped at 0;
    YOLOv5's ``gr``); ``obj_balance``: per-level objectness multipliers, finest first."""

    def __init__(
        self,
        num_classes: int,
        strides: list[int],
        anchors: list[list[tuple[float, float]]],
        box_weight: float = 5.0,
        obj_weight: float = 1.0,
        cls_weight: float = 1.0,
        beta: float = 0.1,
        assigner: str = "center",
        anchor_t: float = 4.0,
        xy_scale: float = 1.0,
        box_loss: str = "smooth_l1",
        cls_loss: str = "ce",
        label_smoothing: float = 0.0,
        obj_loss: str = "bce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        obj_prior: float = 0.01,
        obj_iou: float = 0.0,
        obj_balance: list[float] | None = None,
        check_init: bool = True,
    ) -> None:
        super().__init__(check_init)
        if not 0.0 <= obj_iou <= 1.0:
            raise ValueError(f"obj_iou must be in [0, 1], got {obj_iou}")
        if obj_balance and len(obj_balance) != len(strides):
            raise ValueError(f"obj_balance needs one weight per stride {strides}: {obj_balance}")
        _check_choice("assigner", assigner, ASSIGNERS)
        _check_choice("box_loss", box_loss, BOX_LOSSES)
        _check_choice("cls_loss", cls_loss, CLS_LOSSES)
        _check_choice("obj_loss", obj_loss, OBJ_LOSSES)
        self.num_classes = num_classes
        self.strides = strides
        self.anchors = anchors
        self.num_anchors = len(anchors[0])
        self.weights = (box_weight, obj_weight, cls_weight)
        self.beta = beta
        self.assigner, self.anchor_t, self.xy_scale = assigner, anchor_t, xy_scale
        self.box_loss, self.cls_loss, self.obj_loss = box_loss, cls_loss, obj_loss
        self.label_smoothing = label_smoothing
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.obj_prior = obj_prior
        self.obj_iou = float(obj_iou)
        self.obj_balance = [float(w) for w in obj_balance] if obj_balance else []
        self._balance: dict[tuple, Tensor] = {}  # obj_balance weights per grid
        self.coder = GridCoder()

    def assign(self, targets: Tensor, feature_sizes: list[tuple[int, int]]) -> Assignment:
        """Positive (image, prior, target) triples for ``targets`` on these grids."""
        if self.assigner == "neighbors":
            return assign_neighbors(
                targets, feature_sizes, self.strides, self.anchors, self.anchor_t
            )
        return assign_center_cell(targets, feature_sizes, self.strides, self.anchors)

    def initial_raw(self, raw: Tensor) -> Tensor:
        ideal = torch.zeros_like(raw)
        ideal[..., 4] = math.log(self.obj_prior / (1 - self.obj_prior))
        return ideal

    def _box(self, pred: Tensor, target: Tensor, priors: Tensor) -> tuple[Tensor, Tensor]:
        """Summed box loss of positives and their detached IoUs ``[P]``: ``pred [P, 4]`` raw,
        ``target [P, 4]`` xyxy input px, ``priors [P, 5]``."""
        deltas = grid_deltas(pred, self.xy_scale)
        # exp of a wild early log-size must not overflow: e^10 is 22026 prior sizes
        clamped = torch.cat((deltas[:, :2], deltas[:, 2:].clamp(-10, 10)), dim=1)
        boxes = grid_decode(clamped, priors)
        with torch.no_grad():
            iou = aligned_iou(boxes.detach(), target)
        if self.box_loss == "smooth_l1":
            loss = L.smooth_l1(deltas, self.coder.encode(target, priors), self.beta).sum()
        else:
            loss = L.iou_loss(boxes, target, self.box_loss).sum()
        return loss, iou

    def _obj(self, logits: Tensor, target: Tensor, feature_sizes: list[tuple[int, int]]) -> Tensor:
        """Summed objectness loss over every prior, ``logits, target [B, N]``, each level
        weighted by ``obj_balance``."""
        if self.obj_loss == "focal":
            loss = L.sigmoid_focal_loss(logits, target, self.focal_alpha, self.focal_gamma)
        else:
            loss = L.binary_cross_entropy(logits, target)
        if not self.obj_balance:
            return loss.sum()
        # each prior's level weight [N], cached per input size and device
        key = (tuple(map(tuple, feature_sizes)), loss.device, loss.dtype)
        if key not in self._balance:
            counts = [h * w * self.num_anchors for h, w in feature_sizes]
            self._balance[key] = torch.repeat_interleave(
                loss.new_tensor(self.obj_balance), loss.new_tensor(counts, dtype=torch.long)
            )
        return (loss * self._balance[key]).sum()

    def compute(
        self, raw: Tensor, targets: Tensor, priors: Tensor, feature_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        raw = raw.float()
        a = self.assign(targets, feature_sizes)
        num_pos = torch.full((), float(len(a.prior_idx)), device=raw.device)  # no host copy

        pos = raw[a.batch_idx, a.prior_idx]  # [P, 5 + C]
        matched = targets[a.target_idx]
        box, iou = self._box(pos[:, :4], matched[:, 2:6], priors[a.prior_idx])
        logits, labels = pos[:, 5:], matched[:, 1].long()
        if self.cls_loss == "hinge":
            cls = L.multiclass_hinge(logits, labels).sum()
        elif self.cls_loss == "focal":
            cls = L.softmax_focal_loss(logits, labels, self.focal_gamma, self.label_smoothing).sum()
        else:
            cls = L.cross_entropy(logits, labels, self.label_smoothing).sum()

        obj_target = torch.zeros_like(raw[..., 4])
        quality = (1.0 - self.obj_iou) + self.obj_iou * iou.clamp(min=0.0)
        obj_target[a.batch_idx, a.prior_idx] = quality.to(obj_target.dtype)
        obj = self._obj(raw[..., 4], obj_target, feature_sizes)

        wb, wo, wc = self.weights
        return torch.stack([box * wb, obj * wo, cls * wc]), num_pos

"""SSD's multibox loss: matching by IoU, smooth L1 on variance-encoded offsets, softmax
cross-entropy with a background class and hard negative mining."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from detkit.boxes import box_convert
from detkit.boxes.coder import SSDCoder, ssd_decode
from detkit.models.losses import functional as L
from detkit.models.losses.assign import match_default_boxes
from detkit.models.losses.base import Criterion

SSD_BOX_LOSSES = ("smooth_l1", *L.IOU_LOSSES)


class SSDLoss(Criterion):
    """Multibox loss for raw SSD output ``[B, N, 5 + C]`` (4 offsets, background + C logits):
    positives (:func:`detkit.models.losses.assign.match_default_boxes` at ``match_iou``) get the
    box loss (``"smooth_l1"`` on the encoded offsets, or an IoU-family loss on decoded boxes) and
    their class's cross-entropy (``cls``); ``obj`` is the background cross-entropy of the
    ``neg_pos_ratio x`` positives hardest negatives per image."""

    def __init__(
        self,
        num_classes: int,
        variances: tuple[float, float] = (0.1, 0.2),
        match_iou: float = 0.5,
        neg_pos_ratio: float = 3.0,
        box_weight: float = 1.0,
        obj_weight: float = 1.0,
        cls_weight: float = 1.0,
        beta: float = 1.0,
        box_loss: str = "smooth_l1",
        label_smoothing: float = 0.0,
        obj_prior: float = 0.01,
        check_init: bool = True,
    ) -> None:
        super().__init__(check_init)
        if box_loss not in SSD_BOX_LOSSES:
            raise ValueError(f"box_loss {box_loss!r} unknown; choose one of {SSD_BOX_LOSSES}")
        self.num_classes = num_classes
        self.coder = SSDCoder(variances)
        self.match_iou, self.neg_pos_ratio = match_iou, neg_pos_ratio
        self.weights = (box_weight, obj_weight, cls_weight)
        self.beta, self.box_loss, self.label_smoothing = beta, box_loss, label_smoothing
        self.obj_prior = obj_prior

    def initial_raw(self, raw: Tensor) -> Tensor:
        ideal = torch.zeros_like(raw)
        ideal[..., 4] = math.log((1 - self.obj_prior) * self.num_classes / self.obj_prior)
        return ideal

    def _box(self, pred: Tensor, target: Tensor, priors: Tensor) -> Tensor:
        """Summed box loss: ``pred [P, 4]`` raw offsets, ``target [P, 4]`` xyxy input px,
        ``priors [P, 4]`` cxcywh input px."""
        if self.box_loss == "smooth_l1":
            return L.smooth_l1(pred, self.coder.encode(target, priors), self.beta).sum()
        limit = math.log(1e3) / self.coder.variances[1]
        pred = torch.cat((pred[:, :2], pred[:, 2:].clamp(-limit, limit)), dim=1)
        boxes = ssd_decode(pred, priors, self.coder.variances)
        return L.iou_loss(boxes, target, self.box_loss).sum()

    def hard_negatives(self, ce: Tensor, positive: Tensor) -> Tensor:
        """Mask ``[B, N]`` of the negatives kept: per image the ``neg_pos_ratio * P_b`` non-positive
        boxes with the highest background cross-entropy ``ce [B, N]`` (ties: lower index)."""
        loss = ce.detach().masked_fill(positive, -1.0)
        rank = loss.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        num_pos = positive.sum(dim=1, keepdim=True)
        num_neg = torch.minimum((num_pos * self.neg_pos_ratio).long(), ce.shape[1] - num_pos)
        return (rank < num_neg) & ~positive

    def compute(
        self, raw: Tensor, targets: Tensor, priors: Tensor, feature_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        raw = raw.float()
        b, n, _ = raw.shape
        a = match_default_boxes(targets, box_convert(priors, "cxcywh", "xyxy"), b, self.match_iou)
        num_pos = torch.full((), float(a.num_pos), device=raw.device)  # no host copy
        labels = torch.zeros((b, n), dtype=torch.long, device=raw.device)
        labels[a.batch_idx, a.prior_idx] = targets[a.target_idx, 1].long() + 1
        positive = labels > 0

        logits = raw[..., 4:]
        ce = L.cross_entropy(logits.reshape(b * n, -1), labels.reshape(-1)).view(b, n)
        negative = self.hard_negatives(ce, positive)
        obj = (ce * negative).sum()
        pos_logits = logits[a.batch_idx, a.prior_idx]
        cls = L.cross_entropy(pos_logits, labels[a.batch_idx, a.prior_idx], self.label_smoothing)
        box = self._box(
            raw[a.batch_idx, a.prior_idx, :4], targets[a.target_idx, 2:6], priors[a.prior_idx]
        )

        wb, wo, wc = self.weights
        return torch.stack([box * wb, obj * wo, cls.sum() * wc]), num_pos

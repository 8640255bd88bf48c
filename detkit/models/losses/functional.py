"""Loss functions returning one loss per row or element; reductions (sum, normalisation by
positives, mining) are the caller's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detkit.boxes.iou import aligned_iou


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth L1: ``0.5 * x**2 / beta`` where ``|x| < beta``, else ``|x| - 0.5 * beta``
    (``beta = 0``: L1).

    Example:
        >>> smooth_l1(torch.tensor([0.05, 2.0]), torch.zeros(2), beta=0.1)
        tensor([0.0125, 1.9500])
    """
    diff = (pred - target).abs()
    if beta <= 0:
        return diff
    return torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Softmax cross-entropy ``[N]`` of ``logits [N, C]`` and int64 ``target [N]``; label
    smoothing ``e`` in [0, 1) puts ``1 - e + e / C`` on the true class, ``e / C`` elsewhere.

    Example:
        >>> cross_entropy(torch.zeros(1, 4), torch.tensor([2]))  # ln 4
        tensor([1.3863])
    """
    return F.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid binary cross-entropy: ``-t log s(x) - (1 - t) log(1 - s(x))``.

    Example:
        >>> binary_cross_entropy(torch.tensor([0.0]), torch.tensor([1.0]))  # ln 2
        tensor([0.6931])
    """
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """RetinaNet's focal loss on sigmoid outputs: ``alpha_t * (1 - p_t) ** gamma * BCE``
    (``p_t``, ``alpha_t``: ``p``, ``alpha`` for targets 1, ``1 - p``, ``1 - alpha`` for 0;
    ``alpha < 0``: no weighting).

    Example:
        >>> sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0]))  # 0.25 * 0.5**2 * ln 2
        tensor([0.0433])
    """
    p = logits.sigmoid()
    bce = binary_cross_entropy(logits, targets)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def softmax_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Focal loss on a softmax: ``(1 - p_y) ** gamma * CE`` per row, arguments as
    :func:`cross_entropy`.

    Example:
        >>> softmax_focal_loss(torch.zeros(1, 2), torch.tensor([0]))  # 0.5**2 * ln 2
        tensor([0.1733])
    """
    p_y = logits.softmax(dim=-1).gather(-1, target[:, None]).squeeze(-1)
    return (1 - p_y) ** gamma * cross_entropy(logits, target, label_smoothing)


def multiclass_hinge(
    logits: torch.Tensor, target: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Multiclass SVM loss per row of scores ``s [N, C]`` and int64 classes ``y [N]``:
    ``sum_{j != y} max(0, s_j - s_y + margin)``.

    Example:
        >>> multiclass_hinge(torch.tensor([[3.2, 5.1, -1.7]]), torch.tensor([0]))  # 2.9 + 0
        tensor([2.9000])
    """
    true = logits.gather(-1, target[:, None])
    margins = (logits - true + margin).clamp(min=0)
    return margins.sum(dim=-1) - margin  # the j = y term is exactly max(0, margin) = margin


IOU_LOSSES = ("iou", "giou", "diou", "ciou")


def iou_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "giou") -> torch.Tensor:
    """``1 - IoU`` (or GIoU, DIoU, CIoU: ``kind``) of aligned xyxy pairs ``pred, target
    [..., 4]`` in one px frame: ``[...]`` in [0, 2] (CIoU: [0, 2.5]), finite for zero-size boxes.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> iou_loss(a, torch.tensor([[1.0, 0.0, 3.0, 2.0]]), "iou")  # 1 - 2 / 6
        tensor([0.6667])
    """
    if kind not in IOU_LOSSES:
        raise ValueError(f"IoU loss kind {kind!r} unknown; choose one of {', '.join(IOU_LOSSES)}")
    return 1 - aligned_iou(pred, target, kind)

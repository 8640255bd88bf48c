"""Element-wise loss functions; reductions (sum, normalisation by positives) are the caller's.

Every function returns one loss per row (or per element for the element-wise ones), so a
criterion can mask, mine and normalise as it needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detkit.boxes.iou import aligned_iou


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth L1 (Huber / beta), element-wise, no reduction.

    ``0.5 * x**2 / beta`` where ``|x| < beta``, else ``|x| - 0.5 * beta``; ``beta = 0`` is L1.

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
    """Softmax cross-entropy per row.

    With label smoothing ``e`` the target distribution is ``1 - e + e / C`` on the true class
    and ``e / C`` on the others, so uniform logits still give ``ln C``.

    Args:
        logits: ``[N, C]`` raw class scores.
        target: ``[N]`` int64 class indices in ``0..C-1``.
        label_smoothing: ``e`` in [0, 1).

    Returns:
        ``[N]`` losses.

    Example:
        >>> cross_entropy(torch.zeros(1, 4), torch.tensor([2]))  # ln 4
        tensor([1.3863])
    """
    return F.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid binary cross-entropy, element-wise: ``-t log s(x) - (1 - t) log(1 - s(x))``.

    Example:
        >>> binary_cross_entropy(torch.tensor([0.0]), torch.tensor([1.0]))  # ln 2
        tensor([0.6931])
    """
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss (RetinaNet) on sigmoid outputs, element-wise.

    ``alpha_t * (1 - p_t) ** gamma * BCE`` with ``p_t = p`` for targets 1 and ``1 - p`` for 0,
    ``alpha_t = alpha`` for targets 1 and ``1 - alpha`` for 0 (``alpha < 0`` turns weighting
    off). ``gamma = 0`` and ``alpha < 0`` give plain BCE.

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
    """Focal loss on a softmax: ``(1 - p_y) ** gamma * CE`` per row (``gamma = 0`` is CE).

    Args:
        logits: ``[N, C]``; target: ``[N]`` int64; label_smoothing: as :func:`cross_entropy`.

    Example:
        >>> softmax_focal_loss(torch.zeros(1, 2), torch.tensor([0]))  # 0.5**2 * ln 2
        tensor([0.1733])
    """
    p_y = logits.softmax(dim=-1).gather(-1, target[:, None]).squeeze(-1)
    return (1 - p_y) ** gamma * cross_entropy(logits, target, label_smoothing)


def multiclass_hinge(
    logits: torch.Tensor, target: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Multiclass SVM (hinge) loss per row: ``sum_{j != y} max(0, s_j - s_y + margin)``.

    Args:
        logits: ``[N, C]`` class scores ``s``; target: ``[N]`` int64 true class ``y``.
        margin: the required gap between the true score and every other score.

    Example:
        >>> multiclass_hinge(torch.tensor([[3.2, 5.1, -1.7]]), torch.tensor([0]))  # 2.9 + 0
        tensor([2.9000])
    """
    true = logits.gather(-1, target[:, None])
    margins = (logits - true + margin).clamp(min=0)
    return margins.sum(dim=-1) - margin  # the j = y term is exactly max(0, margin) = margin


IOU_LOSSES = ("iou", "giou", "diou", "ciou")


def iou_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "giou") -> torch.Tensor:
    """``1 - IoU`` (or GIoU, DIoU, CIoU) of aligned box pairs.

    The IoU family of :mod:`detkit.boxes.iou` adds ``eps`` to every denominator: values and
    gradients stay finite for zero-size boxes.

    Args:
        pred: ``[..., 4]`` xyxy (any px frame, ``x1 <= x2``, ``y1 <= y2``).
        target: the same shape and frame.
        kind: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``.

    Returns:
        ``[...]`` losses in [0, 2] (CIoU: [0, 2.5]).

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> iou_loss(a, torch.tensor([[1.0, 0.0, 3.0, 2.0]]), "iou")  # 1 - 2 / 6
        tensor([0.6667])
    """
    if kind not in IOU_LOSSES:
        raise ValueError(f"IoU loss kind {kind!r} unknown; choose one of {', '.join(IOU_LOSSES)}")
    return 1 - aligned_iou(pred, target, kind)

"""The IoU family (IoU, generalized, distance, complete), differentiable, of ``xyxy`` boxes in one
pixel frame (``x1 <= x2``, ``y1 <= y2``): ``boxes1`` Tensor[N, 4], ``boxes2`` Tensor[M, 4] ->
Tensor[N, M] as torchvision.ops but 0 for 0/0; or, ``pairwise=True`` (losses), aligned Tensor[...,
4] pairs -> Tensor[...] with ``eps`` in every denominator (torchvision's ``*_box_iou_loss``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from detkit.boxes._io import array_api, check_boxes

# matrix rows go in chunks of about this many elements, so one chunk's temporaries stay in cache
_CHUNK_ELEMENTS = 2**17
KINDS = ("iou", "giou", "diou", "ciou")


def _apply(kind: str, boxes1: Tensor, boxes2: Tensor, pairwise: bool, eps: float) -> Tensor:
    """Validate the operands and evaluate :func:`_family` on aligned pairs or the N x M matrix."""
    boxes1 = check_boxes(boxes1, "boxes1", batched=pairwise)
    boxes2 = check_boxes(boxes2, "boxes2", batched=pairwise)
    if pairwise:
        if boxes1.shape != boxes2.shape:
            raise ValueError(
                "with pairwise=True, boxes1 and boxes2 must have the same shape [..., 4], got "
                f"{tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
            )
        return _family(boxes1, boxes2, kind, True, eps)
    n, m = boxes1.shape[0], boxes2.shape[0]
    rows = max(1, _CHUNK_ELEMENTS // max(m, 1))
    needs_grad = torch.is_grad_enabled() and (boxes1.requires_grad or boxes2.requires_grad)
    if needs_grad or rows >= n:
        return _family(boxes1[:, None, :], boxes2[None, :, :], kind, False, eps)
    out = torch.empty((n, m), dtype=torch.result_type(boxes1, boxes2), device=boxes1.device)
    b = boxes2[None, :, :]
    for start in range(0, n, rows):
        out[start : start + rows] = _family(
            boxes1[start : start + rows, None, :], b, kind, False, eps
        )
    return out


def _family(a: Tensor, b: Tensor, kind: str, pairwise: bool, eps: float) -> Tensor:
    """``kind`` (one of :data:`KINDS`) of xyxy ``a`` and ``b``, broadcast against each other.
    Ratios whose numerator is 0 when the denominator is: pairwise, ``den + eps`` (torchvision's
    losses); matrix, a zero ``den`` becomes 1, so 0/0 is 0 with a finite gradient and every other
    value stays bit-equal to torchvision."""
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    iou = inter / (union + eps) if pairwise else inter / torch.where(union == 0, 1.0, union)
    if kind == "iou":
        return iou
    # the enclosing box C
    cw = (torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])).clamp(min=0)
    ch = (torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])).clamp(min=0)
    if kind == "giou":
        area_c = cw * ch
        den = area_c + eps if pairwise else torch.where(area_c == 0, 1.0, area_c)
        return iou - (area_c - union) / den
    dx = (a[..., 0] + a[..., 2]) / 2 - (b[..., 0] + b[..., 2]) / 2
    dy = (a[..., 1] + a[..., 3]) / 2 - (b[..., 1] + b[..., 3]) / 2
    diou = iou - (dx**2 + dy**2) / (cw**2 + ch**2 + eps)
    if kind == "diou":
        return diou
    angle_a = _aspect_angle(a[..., 2] - a[..., 0], a[..., 3] - a[..., 1])
    angle_b = _aspect_angle(b[..., 2] - b[..., 0], b[..., 3] - b[..., 1])
    v = (4 / math.pi**2) * (angle_a - angle_b) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def _aspect_angle(w: Tensor, h: Tensor) -> Tensor:
    """atan(w / h), written as atan2 so h = 0 is finite; a 0 x 0 box gets angle 0, gradient 0."""
    point = (w == 0) & (h == 0)
    return torch.atan2(torch.where(point, 0.0, w), torch.where(point, 1.0, h))


@array_api
def box_iou(boxes1: Tensor, boxes2: Tensor, *, pairwise: bool = False, eps: float = 1e-7) -> Tensor:
    """Intersection over union, in [0, 1]; ``eps`` is used in pairwise mode only.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> box_iou(a, torch.tensor([[1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0]]))
        tensor([[0.3333, 0.0000]])
    """
    return _apply("iou", boxes1, boxes2, pairwise, eps)


@array_api
def generalized_box_iou(
    boxes1: Tensor, boxes2: Tensor, *, pairwise: bool = False, eps: float = 1e-7
) -> Tensor:
    """Generalized IoU ``IoU - (|C| - |A ∪ B|) / |C|``, C the enclosing box; in [-1, 1].

    Example:
        >>> generalized_box_iou(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]]))
        tensor([[-0.3333]])
    """
    return _apply("giou", boxes1, boxes2, pairwise, eps)


@array_api
def distance_box_iou(
    boxes1: Tensor, boxes2: Tensor, *, pairwise: bool = False, eps: float = 1e-7
) -> Tensor:
    """Distance IoU ``IoU - d² / (c² + eps)``, d the centre distance, c the enclosing diagonal;
    in [-1, 1].

    Example:
        >>> distance_box_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
        tensor([[1.]])
    """
    return _apply("diou", boxes1, boxes2, pairwise, eps)


@array_api
def complete_box_iou(
    boxes1: Tensor, boxes2: Tensor, *, pairwise: bool = False, eps: float = 1e-7
) -> Tensor:
    """Complete IoU: distance IoU minus ``alpha * v``, in [-1.5, 1], with ``v = 4/pi² (atan(w1/h1)
    - atan(w2/h2))²`` (as ``atan2(w, h)``: zero heights stay finite) and ``alpha = v / (1 - IoU +
    v + eps)``, a constant in backpropagation (CIoU paper).

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
        >>> complete_box_iou(a, a, pairwise=True)
        tensor([1.0000])
    """
    return _apply("ciou", boxes1, boxes2, pairwise, eps)


def aligned_iou(boxes1: Tensor, boxes2: Tensor, kind: str = "iou", eps: float = 1e-7) -> Tensor:
    """``box_iou(..., pairwise=True)`` and its siblings (``kind`` one of :data:`KINDS`) on torch
    ``[..., 4]`` xyxy pairs, without numpy handling or checks: the losses'."""
    if kind not in KINDS:
        raise ValueError(f"IoU kind {kind!r} unknown; choose one of {', '.join(KINDS)}")
    return _family(boxes1, boxes2, kind, True, eps)

"""Box formats and per-box operations. :func:`box_convert` is the one place the non-``xyxy``
formats are handled: ``xywh`` (top-left + size, COCO/torchvision) and ``cxcywh`` (centre + size)."""

from __future__ import annotations

import torch
from torch import Tensor

from detkit.boxes._io import array_api, check_boxes

FORMATS = ("xyxy", "xywh", "cxcywh")


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xyxy":
        return boxes.clone()
    a, b, w, h = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((a, b, a + w, b + h), dim=-1)
    return torch.stack((a - 0.5 * w, b - 0.5 * h, a + 0.5 * w, b + 0.5 * h), dim=-1)


def _from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xyxy":
        return boxes
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


@array_api
def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes Tensor[..., 4] from ``in_fmt`` to ``out_fmt`` (``"xyxy"``, ``"xywh"``,
    ``"cxcywh"``) in the input's pixel frame: a new tensor, same dtype. Raises ``ValueError`` for
    an unknown format or a shape other than ``[..., 4]``.

    Example:
        >>> box_convert(torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "xyxy", "cxcywh")
        tensor([[20., 40., 20., 40.]])
    """
    boxes = check_boxes(boxes, batched=True)
    for fmt in (in_fmt, out_fmt):
        if fmt not in FORMATS:
            raise ValueError(f"box format must be one of {FORMATS}, got {fmt!r}")
    if in_fmt == out_fmt:
        return boxes.clone()
    return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)


@array_api(keep_float32=True)
def box_area(boxes: Tensor) -> Tensor:
    """Area of ``xyxy`` boxes (Tensor[..., 4], ``x1 <= x2``, ``y1 <= y2``) -> Tensor[...] in px².

    Half-precision input returns float32: areas above 65504 px² do not fit in float16.

    Example:
        >>> box_area(torch.tensor([[0.0, 0.0, 10.0, 5.0], [2.0, 2.0, 2.0, 9.0]]))
        tensor([50.,  0.])
    """
    boxes = check_boxes(boxes, batched=True)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


@array_api
def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip ``xyxy`` boxes Tensor[..., 4] to an image of ``size = (height, width)`` px: x in
    ``[0, width]``, y in ``[0, height]``; a new tensor, same dtype.

    Example:
        >>> clip_boxes(torch.tensor([[-5.0, 10.0, 700.0, 500.0]]), (480, 640))
        tensor([[  0.,  10., 640., 480.]])
    """
    boxes = check_boxes(boxes, batched=True)
    height, width = size
    return torch.minimum(boxes.clamp(min=0), boxes.new_tensor([width, height, width, height]))


@array_api
def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (Tensor[K] int64, increasing) of the ``xyxy`` boxes Tensor[N, 4] whose width and
    height are both ``>= min_size`` px, as ``torchvision.ops.remove_small_boxes``.

    Example:
        >>> remove_small_boxes(torch.tensor([[0.0, 0.0, 1.0, 9.0], [0.0, 0.0, 4.0, 4.0]]), 2.0)
        tensor([1])
    """
    boxes = check_boxes(boxes)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return torch.nonzero((w >= min_size) & (h >= min_size)).reshape(-1)

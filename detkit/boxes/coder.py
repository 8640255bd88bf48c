"""Box coders: grid (YOLO) and default-box (SSD) priors, exact encode/decode (the one place a box
leaves ``xyxy`` input px; ``decode`` traces into ONNX). Priors by level (joined), row, column, prior
in the cell: ``out [B, A * K, H, W]`` as ``out.permute(0, 2, 3, 1).reshape(B, H * W * A, K)``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detkit.boxes._io import array_api, check_boxes, check_shape
from detkit.boxes.coords import clip_boxes


def _check_levels(feature_sizes: Sequence[tuple[int, int]], per_level: dict[str, Sequence]) -> None:
    for name, values in per_level.items():
        if len(values) != len(feature_sizes):
            raise ValueError(
                f"{name} must have one entry per level ({len(feature_sizes)}), got {len(values)}"
            )


def _cells(height: int, width: int, per_cell: int, device: torch.device | None) -> Tensor:
    """Tensor[H * W * per_cell, 2] of (x, y) cell indices in (y, x, prior) order, int64."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    xy = torch.stack((xs, ys), dim=-1)[:, :, None, :].expand(height, width, per_cell, 2)
    return xy.reshape(-1, 2)


def make_grid_priors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    anchors: Sequence[Sequence[tuple[float, float]]] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Grid priors of a YOLO-style head: Tensor[N, 5] ``(gx, gy, stride, anchor_w, anchor_h)``,
    one row per (level, cell, anchor) in the module's order, ``N = sum H * W * A``, for grids of
    ``feature_sizes`` ``(H, W)`` with ``strides`` input px per cell and per level ``anchors``
    ``(w, h)`` in input px (None: one ``(stride, stride)`` prior per cell).

    Example:
        >>> make_grid_priors([(1, 2)], [32], [[(10.0, 13.0), (16.0, 30.0)]])
        tensor([[ 0.,  0., 32., 10., 13.],
                [ 0.,  0., 32., 16., 30.],
                [ 1.,  0., 32., 10., 13.],
                [ 1.,  0., 32., 16., 30.]])
    """
    levels = {"strides": strides} if anchors is None else {"strides": strides, "anchors": anchors}
    _check_levels(feature_sizes, levels)
    rows = []
    for level, ((height, width), stride) in enumerate(zip(feature_sizes, strides, strict=True)):
        wh = [(stride, stride)] if anchors is None else anchors[level]
        wh = torch.tensor(wh, dtype=dtype, device=device).reshape(-1, 2)
        cells = _cells(height, width, wh.shape[0], device).to(dtype)
        wh = wh.repeat(height * width, 1)
        stride_col = torch.full((cells.shape[0], 1), float(stride), dtype=dtype, device=device)
        rows.append(torch.cat((cells, stride_col, wh), dim=1))
    return torch.cat(rows) if rows else torch.empty((0, 5), dtype=dtype, device=device)


def _centre_size(boxes: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Centres and sizes of xyxy boxes; sizes floored at ``eps`` so their log is finite."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2, (boxes[..., 2:] - boxes[..., :2]).clamp(min=eps)


def _from_centre_size(centre: Tensor, size: Tensor) -> Tensor:
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1)


def grid_decode(deltas: Tensor, priors: Tensor) -> Tensor:
    """:meth:`GridCoder.decode` without numpy or shape checks, for the models' hot path:
    deltas Tensor[..., N, 4], priors Tensor[N, 5] -> Tensor[..., N, 4] xyxy input px."""
    centre = (deltas[..., :2] + priors[:, :2]) * priors[:, 2:3]
    return _from_centre_size(centre, torch.exp(deltas[..., 2:]) * priors[:, 3:5])


def ssd_decode(deltas: Tensor, priors: Tensor, variances: tuple[float, float]) -> Tensor:
    """:meth:`SSDCoder.decode` without numpy or shape checks, for the models' hot path:
    deltas Tensor[..., N, 4], priors Tensor[N, 4] cxcywh -> Tensor[..., N, 4] xyxy input px."""
    centre = deltas[..., :2] * variances[0] * priors[:, 2:] + priors[:, :2]
    return _from_centre_size(centre, torch.exp(deltas[..., 2:] * variances[1]) * priors[:, 2:])


def _check_deltas(deltas: Tensor, priors: Tensor) -> Tensor:
    if torch.jit.is_tracing():  # shapes are traced values there; the check would be a constant
        return deltas
    if deltas.dim() < 2 or deltas.shape[-2:] != (priors.shape[0], 4):
        raise ValueError(
            f"deltas must have shape [..., N, 4] with N = len(priors) = {priors.shape[0]}, "
            f"got {tuple(deltas.shape)}"
        )
    return deltas


def _check_priors(priors: Tensor, columns: int) -> Tensor:
    if torch.jit.is_tracing():
        return priors
    if not isinstance(priors, Tensor) or priors.dim() != 2 or priors.shape[1] != columns:
        shape = tuple(priors.shape) if isinstance(priors, Tensor) else type(priors).__name__
        raise ValueError(f"priors must have shape [N, {columns}], got {shape}")
    return priors


class GridCoder:
    """YOLO (v2/v3) grid coder: ``ox = cx / stride - gx`` (in [0, 1) in the cell holding the
    centre), ``tw = log(max(w, eps) / anchor_w)`` (``eps`` input px), ``oy``, ``th`` likewise.
    Raw x, y go through a sigmoid before ``decode`` (the caller's job), raw w, h as they are.

    Example:
        >>> priors = torch.tensor([[2.0, 2.0, 8.0, 16.0, 16.0]])  # cell (2, 2) of stride 8
        >>> coder = GridCoder()
        >>> deltas = coder.encode(torch.tensor([[12.0, 4.0, 28.0, 36.0]]), priors)
        >>> deltas
        tensor([[0.5000, 0.5000, 0.0000, 0.6931]])
        >>> coder.decode(deltas, priors)
        tensor([[12.,  4., 28., 36.]])
    """

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps

    @array_api
    def encode(self, boxes: Tensor, priors: Tensor) -> Tensor:
        """boxes Tensor[N, 4] xyxy input px, one per row of priors Tensor[N, 5]
        (:func:`make_grid_priors`) -> Tensor[N, 4] ``(ox, oy, tw, th)``."""
        boxes = check_boxes(boxes)
        priors = _check_priors(priors, 5)
        check_shape(boxes, (priors.shape[0], 4), "boxes", "[N, 4] with N = len(priors)")
        centre, size = _centre_size(boxes, self.eps)
        stride = priors[:, 2:3]
        return torch.cat((centre / stride - priors[:, :2], torch.log(size / priors[:, 3:5])), dim=1)

    @array_api
    def decode(self, deltas: Tensor, priors: Tensor) -> Tensor:
        """Inverse of :meth:`encode`: deltas Tensor[..., N, 4] (ox, oy after the sigmoid; leading
        dims broadcast), priors Tensor[N, 5] -> Tensor[..., N, 4] xyxy input px."""
        priors = _check_priors(priors, 5)
        return grid_decode(_check_deltas(deltas, priors), priors)


def make_default_boxes(
    feature_sizes: Sequence[tuple[int, int]],
    img_size: tuple[int, int],
    scales: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
    *,
    strides: Sequence[float | tuple[float, float]] | None = None,
    clip: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """SSD default boxes Tensor[N, 4] ``(cx, cy, w, h)`` input px, rows in the module's order.

    Level ``k`` (grid ``feature_sizes[k]``) has, per cell centred at ``((x + 0.5) * step_x, (y +
    0.5) * step_y)``, squares of side ``s_k`` and ``sqrt(s_k * s_{k+1})`` (``scales``: levels + 1)
    and per ratio ``r`` the (w, h) ``(s_k * sqrt(r), s_k / sqrt(r))`` and its transpose, as SSD.
    ``strides``: per level, a step or ``(step_y, step_x)`` (default ``img_size / feature_size``,
    ``img_size`` ``(height, width)``); ``clip``: clip the boxes to the image, as some variants do.

    Example:
        >>> make_default_boxes([(1, 1)], (100, 100), [20.0, 80.0], [[4.0]])
        tensor([[50., 50., 20., 20.],
                [50., 50., 40., 40.],
                [50., 50., 40., 10.],
                [50., 50., 10., 40.]])
    """
    _check_levels(feature_sizes, {"aspect_ratios": aspect_ratios, "scales": scales[:-1]})
    if strides is not None:
        _check_levels(feature_sizes, {"strides": strides})
    rows = []
    for k, (height, width) in enumerate(feature_sizes):
        step = strides[k] if strides is not None else (img_size[0] / height, img_size[1] / width)
        step_y, step_x = step if isinstance(step, Sequence) else (step, step)
        wh = [(scales[k], scales[k]), (math.sqrt(scales[k] * scales[k + 1]),) * 2]
        for r in aspect_ratios[k]:
            wh += [(scales[k] * math.sqrt(r), scales[k] / math.sqrt(r))]
            wh += [(scales[k] / math.sqrt(r), scales[k] * math.sqrt(r))]
        wh = torch.tensor(wh, dtype=torch.float64, device=device)
        cells = _cells(height, width, wh.shape[0], device).to(torch.float64) + 0.5
        centres = cells * torch.tensor([step_x, step_y], dtype=torch.float64, device=device)
        rows.append(torch.cat((centres, wh.repeat(height * width, 1)), dim=1))
    boxes = torch.cat(rows) if rows else torch.empty((0, 4), dtype=torch.float64, device=device)
    if clip:
        xyxy = clip_boxes(_from_centre_size(boxes[:, :2], boxes[:, 2:]), img_size)
        boxes = torch.cat(_centre_size(xyxy, 0.0), dim=1)
    return boxes.to(dtype)


class SSDCoder:
    """SSD coder: ``((cx - pcx) / (v0 * pw), (cy - pcy) / (v0 * ph), log(w / pw) / v1,
    log(h / ph) / v1)`` with ``(v0, v1) = variances`` and ``w, h`` floored at ``eps`` input px.

    Example:
        >>> priors = torch.tensor([[50.0, 50.0, 20.0, 20.0]])
        >>> coder = SSDCoder()
        >>> deltas = coder.encode(torch.tensor([[42.0, 40.0, 62.0, 60.0]]), priors)
        >>> deltas
        tensor([[1., 0., 0., 0.]])
        >>> coder.decode(deltas, priors)
        tensor([[42., 40., 62., 60.]])
    """

    def __init__(self, variances: tuple[float, float] = (0.1, 0.2), eps: float = 1e-6) -> None:
        self.variances = (float(variances[0]), float(variances[1]))
        self.eps = eps

    @array_api
    def encode(self, boxes: Tensor, priors: Tensor) -> Tensor:
        """boxes Tensor[N, 4] xyxy input px, one per row of priors Tensor[N, 4] cxcywh input px
        (:func:`make_default_boxes`) -> Tensor[N, 4] offsets."""
        boxes = check_boxes(boxes)
        priors = _check_priors(priors, 4)
        check_shape(boxes, (priors.shape[0], 4), "boxes", "[N, 4] with N = len(priors)")
        centre, size = _centre_size(boxes, self.eps)
        v0, v1 = self.variances
        offset = (centre - priors[:, :2]) / (priors[:, 2:] * v0)
        return torch.cat((offset, torch.log(size / priors[:, 2:]) / v1), dim=1)

    @array_api
    def decode(self, deltas: Tensor, priors: Tensor) -> Tensor:
        """Inverse of :meth:`encode`: deltas Tensor[..., N, 4] (leading dims broadcast), priors
        Tensor[N, 4] -> Tensor[..., N, 4] xyxy input px."""
        priors = _check_priors(priors, 4)
        return ssd_decode(_check_deltas(deltas, priors), priors, self.variances)

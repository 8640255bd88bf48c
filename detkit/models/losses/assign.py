"""Target assignment: which prior (grid cell or default box) is responsible for which object."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch

from detkit.boxes import box_iou


@dataclass
class Assignment:
    """Positive (image, prior) pairs and the target each must predict: ``[P]`` int64 image
    index, row into the head output / priors (``0 <= i < N``), row into the ``[M, 6]`` targets."""

    batch_idx: torch.Tensor
    prior_idx: torch.Tensor
    target_idx: torch.Tensor

    @property
    def num_pos(self) -> int:
        return int(self.prior_idx.numel())


class GridTables(NamedTuple):
    """A grid assigner's constant tensors for one input size (read-only, shared): ``sizes [L*A,
    2]`` prior ``(w, h)`` input px, ``level_of [L*A]``, per level ``[L]`` first prior row, grid
    height and width, stride; ``steps [3, 2]``: the centre cell, the x and the y neighbour."""

    sizes: torch.Tensor
    level_of: torch.Tensor
    offsets: torch.Tensor
    heights: torch.Tensor
    widths: torch.Tensor
    strides: torch.Tensor
    steps: torch.Tensor


def grid_tables(
    feature_sizes: list[tuple[int, int]],
    strides: list[int],
    anchors: list[list[tuple[float, float]]],
    device: torch.device,
    dtype: torch.dtype,
    sizes_dtype: torch.dtype | None = None,
) -> GridTables:
    """:class:`GridTables` of these grids on ``device``, cached per input size (a copy from the
    host every batch would wait for the GPU); ``dtype`` of ``strides`` and, by default, ``sizes``."""
    key = (
        tuple(map(tuple, feature_sizes)), tuple(strides),
        tuple(tuple(map(tuple, level)) for level in anchors),
        torch.device(device), dtype, sizes_dtype or dtype,
    )  # fmt: skip
    return _grid_tables(key)


@functools.lru_cache(maxsize=64)
def _grid_tables(key: tuple) -> GridTables:
    feature_sizes, strides, anchors, device, dtype, sizes_dtype = key
    num_anchors = len(anchors[0])
    counts = torch.tensor([h * w * num_anchors for h, w in feature_sizes], device=device)
    return GridTables(
        sizes=torch.tensor(
            [a for level in anchors for a in level], device=device, dtype=sizes_dtype
        ),
        level_of=torch.arange(len(strides), device=device).repeat_interleave(num_anchors),
        offsets=torch.cumsum(counts, 0) - counts,
        heights=torch.tensor([h for h, _ in feature_sizes], device=device),
        widths=torch.tensor([w for _, w in feature_sizes], device=device),
        strides=torch.tensor(strides, device=device, dtype=dtype),
        steps=torch.tensor([(0, 0), (1, 0), (0, 1)], device=device),
    )


def assign_center_cell(
    targets: torch.Tensor,
    feature_sizes: list[tuple[int, int]],
    strides: list[int],
    anchors: list[list[tuple[float, float]]],
) -> Assignment:
    """Give each object the cell holding its centre, on the (level, anchor) minimising
    ``max(|log(w / a_w)|, |log(h / a_h)|)``; of two objects of one image on the same prior, the
    first in target order keeps it. ``targets [M, 6]``: ``(batch_index, label, x1, y1, x2, y2)``,
    xyxy input px; ``feature_sizes``: ``(H_l, W_l)`` finest first; ``anchors``: per level ``A``
    ``(w, h)`` input px. ``prior_idx`` follows :func:`detkit.boxes.coder.make_grid_priors`."""
    num_anchors = len(anchors[0])
    tables = grid_tables(
        feature_sizes, strides, anchors, targets.device, targets.dtype, torch.get_default_dtype()
    )
    sizes, level_of, offsets, heights, widths, stride_t, _ = tables

    boxes = targets[:, 2:6]
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3)  # [M, 2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    mismatch = (wh[:, None, :] / sizes[None]).log().abs().amax(dim=2)  # [M, L*A]
    k = mismatch.argmin(dim=1)
    level, anchor = level_of[k], k % num_anchors
    cell = (centre / stride_t[level, None]).floor().long()
    gx = torch.minimum(cell[:, 0].clamp(min=0), widths[level] - 1)
    gy = torch.minimum(cell[:, 1].clamp(min=0), heights[level] - 1)
    prior = offsets[level] + (gy * widths[level] + gx) * num_anchors + anchor

    total = sum(h * w for h, w in feature_sizes) * num_anchors  # on the host: no sync
    index = torch.arange(len(targets), device=targets.device)
    return _keep_best_per_prior(targets[:, 0].long(), prior, index, torch.zeros_like(k), total)


def _keep_best_per_prior(
    batch: torch.Tensor, prior: torch.Tensor, target: torch.Tensor, cost: torch.Tensor, total: int
) -> Assignment:
    """One target per (image, prior): the candidate with the lowest cost (then target order)."""
    order = torch.argsort(cost, stable=True)
    key = batch[order] * total + prior[order]
    order = order[torch.argsort(key, stable=True)]
    key = batch[order] * total + prior[order]
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    keep = order[first]
    return Assignment(batch_idx=batch[keep], prior_idx=prior[keep], target_idx=target[keep])


def assign_neighbors(
    targets: torch.Tensor,
    feature_sizes: list[tuple[int, int]],
    strides: list[int],
    anchors: list[list[tuple[float, float]]],
    anchor_t: float = 4.0,
) -> Assignment:
    """Give each object every prior shape that fits (side ratios < ``anchor_t``; the best one
    always), in the centre cell and the x and y neighbours nearest the centre, inside the grid
    (YOLOv5's rule: targets in ``(-0.5, 1.5)`` cells, hence offsets ``2 * sigmoid - 0.5``). Of
    objects claiming one prior, the centre nearest its middle keeps it (then shape fit, then
    target order). Arguments and result as :func:`assign_center_cell`.
    """
    device, dtype = targets.device, targets.dtype
    num_anchors = len(anchors[0])
    tables = grid_tables(feature_sizes, strides, anchors, device, dtype)
    sizes, level_of, offsets, heights, widths, stride_t, steps = tables

    boxes = targets[:, 2:6]
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3)
    log_ratio = (wh[:, None, :] / sizes[None]).log().abs().amax(dim=2)  # [M, L*A]
    fits = log_ratio < torch.log(torch.tensor(anchor_t, dtype=dtype))
    fits[torch.arange(len(targets), device=device), log_ratio.argmin(dim=1)] = True
    t_idx, k = fits.nonzero(as_tuple=True)
    level = level_of[k]

    centre = (boxes[t_idx, :2] + boxes[t_idx, 2:]) / 2 / stride_t[level, None]  # grid units
    size = torch.stack((widths[level], heights[level]), dim=1)
    cell = torch.minimum(centre.floor().long().clamp(min=0), size - 1)
    side = torch.where(centre - cell < 0.5, -1, 1)  # nearer neighbour on each axis
    # the centre cell, then the x and the y neighbour
    cand = torch.cat([cell + side * step for step in steps])
    t_all, k_all = t_idx.repeat(len(steps)), k.repeat(len(steps))
    lvl, size = level.repeat(len(steps)), size.repeat(len(steps), 1)
    inside = ((cand >= 0) & (cand < size)).all(dim=1)
    # distance from the object's centre to the candidate cell's middle, then shape fit
    dist = (centre.repeat(len(steps), 1) - cand - 0.5).abs().amax(dim=1)
    cost = dist + 1e-3 * log_ratio[t_all, k_all]
    prior = offsets[lvl] + (cand[:, 1] * size[:, 0] + cand[:, 0]) * num_anchors
    prior = prior + k_all % num_anchors
    m = inside
    batch = targets[t_all[m], 0].long()
    total = sum(h * w for h, w in feature_sizes) * num_anchors  # on the host: no sync
    return _keep_best_per_prior(batch, prior[m], t_all[m], cost[m], total)


def match_default_boxes(
    targets: torch.Tensor, priors: torch.Tensor, batch_size: int, iou_threshold: float = 0.5
) -> Assignment:
    """SSD matching of ``targets [M, 6]`` (xyxy input px) to default boxes ``priors [N, 4]``
    (xyxy input px): a box is positive for the object it overlaps most when that IoU is at least
    ``iou_threshold``, and every object also gets its best box (contested: highest IoU, then
    target order; an object overlapping no box gets none)."""
    device = targets.device
    m = targets.shape[0]
    if m == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Assignment(empty, empty, empty)
    iou = box_iou(targets[:, 2:6], priors)  # [M, N]
    batch = targets[:, 0].long()
    # per image, objects padded to a [B, M_max, N] block so one max finds each box's object
    counts = torch.bincount(batch, minlength=batch_size)
    order = torch.argsort(batch, stable=True)
    slot = torch.arange(m, device=device) - (torch.cumsum(counts, 0) - counts)[batch[order]]
    most = int(counts.max())  # a shape that depends on the data: one host read
    padded = iou.new_full((batch_size, most, iou.shape[1]), -1.0)
    padded[batch[order], slot] = iou[order]
    index = torch.zeros((batch_size, most), dtype=torch.long, device=device)
    index[batch[order], slot] = order
    best_iou, best_slot = padded.max(dim=1)  # [B, N]
    owner = index.gather(1, best_slot)  # target row of each (image, box)

    # each object's own best box, conflicts resolved by IoU
    gt_iou, gt_prior = iou.max(dim=1)
    has = gt_iou > 0
    forced = _keep_best_per_prior(
        batch[has], gt_prior[has], torch.arange(m, device=device)[has], -gt_iou[has], iou.shape[1]
    )
    best_iou[forced.batch_idx, forced.prior_idx] = 2.0
    owner[forced.batch_idx, forced.prior_idx] = forced.target_idx

    b_idx, p_idx = (best_iou >= iou_threshold).nonzero(as_tuple=True)
    return Assignment(batch_idx=b_idx, prior_idx=p_idx, target_idx=owner[b_idx, p_idx])

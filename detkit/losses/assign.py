"""Target assignment: which grid prior is responsible for which ground-truth box."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Assignment:
    """Positive (image, prior) pairs and the target row each one must predict.

    Attributes:
        batch_idx: ``[P]`` int64 image index of each positive.
        prior_idx: ``[P]`` int64 row into the head output / priors (``0 <= i < N``).
        target_idx: ``[P]`` int64 row into the ``[M, 6]`` targets tensor.
    """

    batch_idx: torch.Tensor
    prior_idx: torch.Tensor
    target_idx: torch.Tensor

    @property
    def num_pos(self) -> int:
        return int(self.prior_idx.numel())


def assign_center_cell(
    targets: torch.Tensor,
    feature_sizes: list[tuple[int, int]],
    strides: list[int],
    anchors: list[list[tuple[float, float]]],
) -> Assignment:
    """Give each object the cell holding its centre, on the prior whose shape fits it best.

    The (level, anchor) pair minimising ``max(|log(w / a_w)|, |log(h / a_h)|)`` is chosen, then
    the cell ``floor(centre / stride)`` on that level. When two objects of one image land on the
    same prior, the first in target order keeps it (the other gets no positive this step).

    Args:
        targets: ``[M, 6]`` rows ``(batch_index, label, x1, y1, x2, y2)``, boxes xyxy input px.
        feature_sizes: ``(H_l, W_l)`` per level, finest first.
        strides: stride per level.
        anchors: per level, ``A`` prior sizes ``(w, h)`` in input px (the same ``A`` everywhere).

    Returns:
        An :class:`Assignment` whose ``prior_idx`` follows :func:`detkit.coder.make_grid_priors`.
    """
    device = targets.device
    num_anchors = len(anchors[0])
    sizes = torch.tensor([a for level in anchors for a in level], device=device)  # [L*A, 2]
    level_of = torch.arange(len(strides), device=device).repeat_interleave(num_anchors)
    counts = torch.tensor([h * w * num_anchors for h, w in feature_sizes], device=device)
    offsets = torch.cumsum(counts, 0) - counts
    heights = torch.tensor([h for h, _ in feature_sizes], device=device)
    widths = torch.tensor([w for _, w in feature_sizes], device=device)
    stride_t = torch.tensor(strides, device=device, dtype=targets.dtype)

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

    batch = targets[:, 0].long()
    total = int(counts.sum())
    key = batch * total + prior
    order = torch.argsort(key, stable=True)
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = order[first]
    return Assignment(batch_idx=batch[keep], prior_idx=prior[keep], target_idx=keep)

"""Non-maximum suppression: hard (torchvision's kernel), class-aware, soft and distance-IoU.
Every function orders by decreasing score, ties by lower index, on every device, and computes
suppression IoUs in float64, so ``nms``, ``batched_nms`` and ``multiclass_nms`` agree exactly."""

from __future__ import annotations

import importlib.machinery
import importlib.util

import numpy as np
import torch
from torch import Tensor

from detkit.boxes._io import array_api, check_boxes, check_shape
from detkit.boxes.iou import _family


def _register_torchvision_ops() -> None:
    """Register ``torch.ops.torchvision`` (the NMS kernel) by loading torchvision's compiled
    extension as torchvision itself does, without importing the package: ``import torchvision``
    also imports ``torch._dynamo`` (through ``torchvision.ops``), over a second of every process's
    start-up. Anything unexpected falls back to the import."""
    try:
        spec = importlib.util.find_spec("torchvision")
        folder = (spec.submodule_search_locations or [""])[0] if spec else ""
        finder = importlib.machinery.FileFinder(
            folder,
            (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        )
        found = finder.find_spec("_C_stable") or finder.find_spec("_C")
        torch.ops.load_library(found.origin)
        torch.ops.torchvision.nms  # noqa: B018  (raises if the library registered no NMS)
    except Exception:
        import torchvision  # noqa: F401


_register_torchvision_ops()

SOFT_METHODS = ("gaussian", "linear")

# Above this many boxes, class-aware NMS runs the quadratic kernel once per class instead of once
# on class-offset boxes; torchvision's thresholds (numel 4000 on CPU, 100000 on GPU).
_LOOP_ABOVE = {"cpu": 1000}
_LOOP_ABOVE_OTHER = 25000

# DIoU-NMS builds suppression matrices of at most this many rows at a time.
_DIOU_BLOCK = 512


def _empty_index(device: torch.device) -> Tensor:
    return torch.empty((0,), dtype=torch.int64, device=device)


def _check_scores(boxes: Tensor, scores: Tensor, name: str = "scores") -> Tensor:
    return check_shape(scores, (boxes.shape[0],), name, "[N] with N = len(boxes)")


def _descending(scores: Tensor) -> Tensor:
    """Indices ordering ``scores`` from high to low, ties by lower index (stable)."""
    return torch.sort(scores, descending=True, stable=True).indices


def _kernel_nms_sorted(boxes: Tensor, iou_threshold: float) -> Tensor:
    """torchvision NMS on boxes sorted by priority -> increasing positions (float64: an IoU at
    the threshold stays there, 2/5 vs 0.4; rank scores n..1: the kernel's sort keeps ties)."""
    ranks = torch.arange(boxes.shape[0], 0, -1, dtype=torch.float64, device=boxes.device)
    # torchvision.ops.nms's own op, without its per-call Python (logging, checks) in the class loop.
    return torch.ops.torchvision.nms(boxes.double(), ranks, iou_threshold)


@array_api
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of boxes Tensor[N, 4] xyxy (any pixel frame, ``x1 <= x2``, ``y1 <= y2``) by
    scores Tensor[N]: a box goes when its float64 IoU with a higher-ranked kept box is ``>
    iou_threshold`` (as torchvision). Returns Tensor[K] int64 indices of the kept boxes, by
    decreasing score, ties in input order.

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
        >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        tensor([0, 2])
    """
    boxes = check_boxes(boxes)
    order = _descending(_check_scores(boxes, scores))
    return order[_kernel_nms_sorted(boxes[order], iou_threshold)]  # torchvision's: none for none


def _group_segments(groups: Tensor) -> tuple[Tensor, list[int]]:
    """Positions grouped by value (stable, so each group stays in priority order) and sizes."""
    perm = torch.sort(groups, stable=True).indices
    return perm, torch.unique_consecutive(groups[perm], return_counts=True)[1].tolist()


def _grouped_nms_sorted(boxes: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS on boxes sorted by priority -> kept positions, increasing (float64 keeps
    box sizes on the class-offset path; a side below ~1e-15 x the span overlaps nothing)."""
    n = boxes.shape[0]
    boxes = boxes.double()
    if n <= _LOOP_ABOVE.get(boxes.device.type, _LOOP_ABOVE_OTHER):
        span = boxes.max() - boxes.min() + 1
        # Offsetting each group by a multiple of the span makes boxes of different groups disjoint.
        shifted = boxes + (groups.to(boxes.dtype) * span)[:, None]
        return _kernel_nms_sorted(shifted, iou_threshold)
    perm, counts = _group_segments(groups)
    grouped = boxes[perm]
    kept, start = [], 0
    for count in counts:
        keep = _kernel_nms_sorted(grouped[start : start + count], iou_threshold)
        kept.append(perm[start + keep])
        start += count
    return torch.sort(torch.cat(kept)).values


@array_api
def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware :func:`nms`: boxes only suppress boxes with the same ``labels`` (Tensor[N] int
    ids); one label gives :func:`nms`'s result. Same boxes, scores and return as :func:`nms`.

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [1, 1, 10, 10]])
        >>> batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), 0.5)
        tensor([0, 1])
    """
    boxes = check_boxes(boxes)
    scores = _check_scores(boxes, scores)
    labels = check_shape(labels, (boxes.shape[0],), "labels", "[N] with N = len(boxes)")
    if boxes.shape[0] == 0:
        return _empty_index(boxes.device)
    order = _descending(scores)
    return order[_grouped_nms_sorted(boxes[order], labels[order], iou_threshold)]


def _soft_nms_numpy(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    sigma: float,
    score_threshold: float,
    linear: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Sequential soft-NMS on float64 numpy -> (kept indices, decayed scores) in selection order."""
    alive = np.flatnonzero(scores >= score_threshold)
    idx, s, b = alive, scores[alive], boxes[alive]
    keep, kept_scores = [], []
    while idx.size:
        # the first maximum: positions stay in input order, so ties -> lower index
        m = int(np.argmax(s))
        keep.append(idx[m])
        kept_scores.append(s[m])
        rest = np.arange(idx.size) != m
        idx, s, b, top = idx[rest], s[rest], b[rest], b[m]
        w = np.clip(np.minimum(b[:, 2], top[2]) - np.maximum(b[:, 0], top[0]), 0, None)
        h = np.clip(np.minimum(b[:, 3], top[3]) - np.maximum(b[:, 1], top[1]), 0, None)
        inter = w * h
        union = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) + (top[2] - top[0]) * (top[3] - top[1])
        union = union - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        if linear:
            s = s * np.where(iou > iou_threshold, 1.0 - iou, 1.0)
        else:
            s = s * np.exp(-(iou * iou) / sigma)
        survive = s >= score_threshold
        idx, s, b = idx[survive], s[survive], b[survive]
    return np.asarray(keep, dtype=np.int64), np.asarray(kept_scores, dtype=np.float64)


@array_api
def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., 2017) of boxes Tensor[N, 4] xyxy by scores Tensor[N] in [0, 1]:
    repeatedly keep the highest current score (ties: lower index) and multiply the others by
    ``exp(-IoU² / sigma)`` (``"gaussian"``, ignores ``iou_threshold``) or by ``1 - IoU`` where
    ``IoU > iou_threshold`` (``"linear"``), dropping scores below ``score_threshold``. Runs on the
    CPU in float64. Returns ``(keep, decayed)``: Tensor[K] int64 indices and Tensor[K] scores
    (input device and dtype), by decreasing score.

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]])
        >>> keep, decayed = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), method="linear")
        >>> keep, decayed
        (tensor([0, 2, 1]), tensor([0.9000, 0.7000, 0.4000]))
    """
    boxes = check_boxes(boxes)
    scores = _check_scores(boxes, scores)
    if method not in SOFT_METHODS:
        raise ValueError(f"method must be one of {SOFT_METHODS}, got {method!r}")
    one_group = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
    args = (iou_threshold, sigma, score_threshold, method == "linear")
    return _grouped_soft_nms(boxes, scores, one_group, *args)


def _grouped_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    iou_threshold: float,
    sigma: float,
    score_threshold: float,
    linear: bool = False,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS per group -> (kept positions, decayed scores), by group, in selection order."""
    perm, counts = _group_segments(groups)
    b = boxes[perm].detach().cpu().double().numpy()
    s = scores[perm].detach().cpu().double().numpy()
    p = perm.cpu().numpy()
    kept, decayed, start = [], [], 0
    for count in counts:
        part = slice(start, start + count)
        k, d = _soft_nms_numpy(b[part], s[part], iou_threshold, sigma, score_threshold, linear)
        kept.append(p[start + k])
        decayed.append(d)
        start += count
    if not kept:
        return _empty_index(boxes.device), scores[:0].detach()
    return (
        torch.from_numpy(np.concatenate(kept)).to(boxes.device),
        torch.from_numpy(np.concatenate(decayed)).to(device=boxes.device, dtype=scores.dtype),
    )


def _grouped_diou_nms_sorted(boxes: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Exact greedy DIoU-NMS within groups on boxes sorted by priority -> kept positions,
    increasing; blockwise (memory O(block x kept)): by earlier keeps, then within the block."""
    boxes = boxes.double()
    kept = _empty_index(boxes.device)
    for start in range(0, boxes.shape[0], _DIOU_BLOCK):
        blk, g = boxes[start : start + _DIOU_BLOCK], groups[start : start + _DIOU_BLOCK]
        alive = torch.ones(blk.shape[0], dtype=torch.bool, device=boxes.device)
        if kept.numel():
            hit = _family(blk[:, None], boxes[kept][None], "diou", False, 1e-7) > iou_threshold
            alive &= ~(hit & (g[:, None] == groups[kept][None])).any(dim=1)
        hit = _family(blk[:, None], blk[None], "diou", False, 1e-7) > iou_threshold
        hit = (hit & (g[:, None] == g[None])).triu(diagonal=1).cpu().numpy()
        alive_np = alive.cpu().numpy()
        for i in np.flatnonzero(alive_np):
            if alive_np[i]:
                alive_np[i + 1 :] &= ~hit[i, i + 1 :]
        new = torch.from_numpy(np.flatnonzero(alive_np)).to(boxes.device) + start
        kept = torch.cat((kept, new))
    return kept

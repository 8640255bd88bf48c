"""``c * p`` scores and multi-class NMS (hard, soft, DIoU) for one image or a batch: the users'
toolbox (detection's :func:`detkit.inference.postprocess.postprocess` equals the hard method)."""

from __future__ import annotations

import torch
from torch import Tensor

from detkit.boxes._io import array_api, check_boxes
from detkit.boxes.suppression import (
    _descending,
    _empty_index,
    _grouped_diou_nms_sorted,
    _grouped_nms_sorted,
    _grouped_soft_nms,
)

METHODS = ("hard", "soft", "diou")

# (boxes [K, 4] xyxy input px, scores [K], labels [K] int64) of one image
BoxesScoresLabels = tuple[Tensor, Tensor, Tensor]


@array_api
def class_scores(objectness: Tensor, class_probs: Tensor) -> Tensor:
    """Class-specific confidence ``c * p`` from probabilities (not logits): objectness Tensor[...]
    and class_probs Tensor[..., C] -> Tensor[..., C].

    Example:
        >>> class_scores(torch.tensor([0.5, 1.0]), torch.tensor([[0.2, 0.8], [1.0, 0.0]]))
        tensor([[0.1000, 0.4000],
                [1.0000, 0.0000]])
    """
    if class_probs.dim() != objectness.dim() + 1 or class_probs.shape[:-1] != objectness.shape:
        raise ValueError(
            "class_probs must have shape [..., C] with [...] = objectness.shape "
            f"{tuple(objectness.shape)}, got {tuple(class_probs.shape)}"
        )
    return objectness.unsqueeze(-1) * class_probs


def _check_predictions(
    boxes: Tensor,
    objectness: Tensor,
    class_probs: Tensor,
    lead: str,
    method: str,
    max_det: int,
    pre_nms_topk: int,
) -> Tensor:
    """Check ``boxes [*L, 4]``, ``objectness [*L]``, ``class_probs [*L, C]`` and the options."""
    ndim = len(lead.split(", "))
    boxes = check_boxes(boxes, batched=True)
    if boxes.dim() != ndim + 1:
        raise ValueError(f"boxes must have shape [{lead}, 4], got {tuple(boxes.shape)}")
    if tuple(objectness.shape) != tuple(boxes.shape[:-1]):
        raise ValueError(
            f"objectness must have shape [{lead}] = {tuple(boxes.shape[:-1])}, "
            f"got {tuple(objectness.shape)}"
        )
    if class_probs.dim() != ndim + 1 or class_probs.shape[:-1] != boxes.shape[:-1]:
        raise ValueError(
            f"class_probs must have shape [{lead}, C] with [{lead}] = {tuple(boxes.shape[:-1])}, "
            f"got {tuple(class_probs.shape)}"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_det < 0 or pre_nms_topk < 1:
        raise ValueError(f"need max_det >= 0 and pre_nms_topk >= 1, got {max_det}, {pre_nms_topk}")
    return boxes


def _best_per_image(image: Tensor, k: int, num_images: int) -> tuple[Tensor, list[int]]:
    """The first ``k`` entries of each of ``num_images`` images, for ``image`` Tensor[M] int64
    ordered by priority -> (positions grouped by image in priority order, count per image)."""
    order = torch.sort(image, stable=True).indices
    counts = torch.bincount(image, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=order.device) - starts[image[order]]
    return order[rank < k], counts.clamp(max=k).tolist()


def _suppress(
    boxes: Tensor, scores: Tensor, groups: Tensor, method: str, iou_threshold: float, *soft: float
) -> tuple[Tensor, Tensor]:
    """NMS within groups -> (kept indices, their scores) by decreasing score, ties by index."""
    if method == "soft":
        keep, decayed = _grouped_soft_nms(boxes, scores, groups, iou_threshold, *soft)
        ascending = torch.sort(keep)
        keep, decayed = ascending.values, decayed[ascending.indices]
        order = _descending(decayed)
        return keep[order], decayed[order]
    order = _descending(scores)
    nms_sorted = _grouped_diou_nms_sorted if method == "diou" else _grouped_nms_sorted
    keep = order[nms_sorted(boxes[order], groups[order], iou_threshold)]
    return keep, scores[keep]


@array_api
def multiclass_nms(
    boxes: Tensor,
    objectness: Tensor,
    class_probs: Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_det: int,
    class_agnostic: bool = False,
    method: str = "hard",
    *,
    pre_nms_topk: int = 30000,
    soft_sigma: float = 0.5,
) -> BoxesScoresLabels:
    """Detections of one image from boxes Tensor[N, 4] xyxy input px, objectness ``c``
    Tensor[N] and class probabilities ``p`` Tensor[N, C]: ``(boxes [K, 4], scores [K], labels [K]
    int64)``, K <= max_det, by decreasing ``c * p`` (ties: lower box index, then lower class).

    Every (box, class) pair scoring ``> score_threshold`` is a candidate (multi-label, as
    YOLOv5/v8 evaluation); the best ``pre_nms_topk`` enter NMS per class (across classes when
    ``class_agnostic``): ``"hard"`` greedy (IoU ``> iou_threshold`` suppresses) or ``"diou"``,
    both in float64, or ``"soft"`` gaussian :func:`soft_nms` with ``soft_sigma``, dropping
    decayed scores below ``score_threshold`` (``iou_threshold`` unused).

    Example:
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]])
        >>> obj = torch.tensor([0.9, 0.8, 0.5])
        >>> probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.2, 0.8]])
        >>> b, s, l = multiclass_nms(boxes, obj, probs, 0.05, 0.5, max_det=100)
        >>> s, l
        (tensor([0.9000, 0.4000, 0.1000]), tensor([0, 1, 0]))
    """
    boxes = _check_predictions(boxes, objectness, class_probs, "N", method, max_det, pre_nms_topk)
    batch_of_one = (boxes[None], objectness[None], class_probs[None])
    args = (score_threshold, iou_threshold, max_det, class_agnostic, method)
    options = {"pre_nms_topk": pre_nms_topk, "soft_sigma": soft_sigma}
    return batched_multiclass_nms(*batch_of_one, *args, **options)[0]


@array_api
def batched_multiclass_nms(
    boxes: Tensor,
    objectness: Tensor,
    class_probs: Tensor,
    score_threshold: float,
    iou_threshold: float,
    max_det: int,
    class_agnostic: bool = False,
    method: str = "hard",
    *,
    pre_nms_topk: int = 30000,
    soft_sigma: float = 0.5,
) -> list[BoxesScoresLabels]:
    """:func:`multiclass_nms` of each image of a batch in one pass: boxes Tensor[B, N, 4] xyxy
    input px, objectness Tensor[B, N], class_probs Tensor[B, N, C] -> B tuples ``(boxes [K, 4],
    scores [K], labels [K] int64)``; images never suppress each other and ``pre_nms_topk``,
    ``max_det`` apply per image.

    Example:
        >>> boxes = torch.tensor([[[0.0, 0, 10, 10]], [[5.0, 5, 9, 9]]])
        >>> out = batched_multiclass_nms(boxes, torch.ones(2, 1), torch.ones(2, 1, 1), 0.5, 0.5, 10)
        >>> [len(s) for _, s, _ in out]
        [1, 1]
    """
    args = (method, max_det, pre_nms_topk)
    boxes = _check_predictions(boxes, objectness, class_probs, "B, N", *args)
    num_images, _, num_classes = class_probs.shape
    scores = class_scores(objectness, class_probs)
    image, box, label = torch.nonzero(scores > score_threshold, as_tuple=True)
    cand_scores = scores[image, box, label]
    counts = torch.bincount(image, minlength=num_images)
    if cand_scores.numel() and int(counts.max()) > pre_nms_topk:
        by_score = _descending(cand_scores)
        top, _ = _best_per_image(image[by_score], pre_nms_topk, num_images)
        sel = torch.sort(by_score[top]).values  # back to candidate order, which breaks ties
        image, box, label, cand_scores = image[sel], box[sel], label[sel], cand_scores[sel]
    cand_boxes = boxes[image, box]
    groups = image if class_agnostic else image * num_classes + label
    if cand_scores.numel():
        soft = (soft_sigma, score_threshold)
        keep, kept_scores = _suppress(cand_boxes, cand_scores, groups, method, iou_threshold, *soft)
    else:
        keep, kept_scores = _empty_index(boxes.device), cand_scores
    best, sizes = _best_per_image(image[keep], max_det, num_images)
    keep, kept_scores = keep[best], kept_scores[best]
    parts = (cand_boxes[keep].split(sizes), kept_scores.split(sizes), label[keep].split(sizes))
    return list(zip(*parts, strict=True))

"""Anchor sizes from a dataset's boxes: k-means on the shape-IoU distance (YOLOv2's recipe),
``1 - min(w, a_w) * min(h, a_h) / union`` for boxes placed at a common corner."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from detkit.data.index import split_targets

if TYPE_CHECKING:
    from detkit.core.protocols import DetectionSplit


def dataset_box_sizes(source: DetectionSplit, img_size: int) -> np.ndarray:
    """Every box's ``(w, h)`` in input px after the letterbox to ``img_size``: float64 ``[M, 2]``,
    boxes under 1 px dropped; a split without ``targets(i)`` and ``image_size(i)`` is decoded."""
    if hasattr(source, "targets") and hasattr(source, "image_size"):
        boxes, _, ends, sizes = split_targets(source)
    else:
        samples = [source.load(i) for i in range(len(source))]
        boxes = np.concatenate([s.boxes.reshape(-1, 4) for s in samples] or [np.zeros((0, 4))])
        ends = np.cumsum([len(s.boxes) for s in samples], dtype=np.int64)
        sizes = np.array([s.image.shape[:2] for s in samples], np.int64).reshape(-1, 2)
    scale = img_size / sizes.max(axis=1, initial=1).astype(np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    wh = (boxes[:, 2:] - boxes[:, :2]) * np.repeat(scale, np.diff(ends, prepend=0))[:, None]
    return wh[(wh >= 1.0).all(axis=1)]


def shape_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of sizes placed at a common corner: ``wh [M, 2]``, ``anchors [K, 2]`` -> ``[M, K]``.

    Example:
        >>> shape_iou(np.array([[2.0, 2.0]]), np.array([[2.0, 2.0], [4.0, 1.0]])).round(3)
        array([[1.   , 0.333]])
    """
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(
        wh[:, None, 1], anchors[None, :, 1]
    )
    union = wh[:, None].prod(axis=2) + anchors[None].prod(axis=2) - inter
    return inter / union


def kmeans_anchors(wh: np.ndarray, k: int, iters: int = 100, seed: int = 0) -> np.ndarray:
    """``k`` anchor sizes ``[k, 2]`` float64 ``(w, h)``, smallest area first, minimising the mean
    ``1 - IoU`` of each box of ``wh [M >= k, 2]`` px to its nearest: seeded k-means++, then at
    most ``iters`` Lloyd iterations with each cluster's median (robust to a few huge boxes)."""
    wh = np.asarray(wh, dtype=np.float64)
    if len(wh) < k:
        raise ValueError(f"need at least {k} boxes for {k} anchors, got {len(wh)}")
    rng = np.random.default_rng(seed)
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d = 1 - shape_iou(wh, np.asarray(centres)).max(axis=1)
        p = d**2 / (d**2).sum() if d.sum() > 0 else None
        centres.append(wh[rng.choice(len(wh), p=p)])
    anchors = np.asarray(centres)
    assign = None
    for _ in range(iters):
        new = shape_iou(wh, anchors).argmax(axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                anchors[j] = np.median(wh[assign == j], axis=0)
    return anchors[np.argsort(anchors.prod(axis=1), kind="stable")]


def anchor_fitness(wh: np.ndarray, anchors: np.ndarray, ratio: float = 4.0) -> dict[str, float]:
    """How well anchors cover boxes: ``mean_iou`` (best anchor's shape IoU), ``recall`` (boxes with
    an anchor within ``ratio`` in both sides, as the ``neighbors`` assigner needs) and
    ``anchors_per_box`` (mean anchors within ``ratio``)."""
    r = wh[:, None, :] / anchors[None]
    worst = np.maximum(r, 1 / r).max(axis=2)  # [M, K]
    within = worst < ratio
    return {
        "mean_iou": float(shape_iou(wh, anchors).max(axis=1).mean()),
        "recall": float(within.any(axis=1).mean()),
        "anchors_per_box": float(within.sum(axis=1).mean()),
    }


def split_levels(anchors: np.ndarray, levels: int) -> list[list[list[float]]]:
    """Sorted anchors ``[L * A, 2]`` -> per level (finest first) ``A`` rounded ``[w, h]``.

    Example:
        >>> split_levels(np.array([[10, 13], [16, 30], [33, 23], [30, 61]]), 2)
        [[[10.0, 13.0], [16.0, 30.0]], [[33.0, 23.0], [30.0, 61.0]]]
    """
    if len(anchors) % levels:
        raise ValueError(f"{len(anchors)} anchors do not split into {levels} levels")
    per = len(anchors) // levels
    return [
        [[round(float(w), 1), round(float(h), 1)] for w, h in anchors[i * per : (i + 1) * per]]
        for i in range(levels)
    ]


def fit_anchors(
    source: DetectionSplit,
    img_size: int,
    levels: int,
    per_level: int,
    seed: int = 0,
    ratio: float = 4.0,
) -> tuple[list[list[list[float]]], dict[str, float]]:
    """k-means anchors for a split as a model config's ``anchors`` (``[levels][per_level][w, h]``
    input px, the finest level the smallest) and :func:`anchor_fitness` (``ratio``: the
    assigner's ``anchor_t``) plus the ``"boxes"`` used; ``ValueError``: fewer boxes than
    anchors."""
    wh = dataset_box_sizes(source, img_size)
    k = levels * per_level
    if len(wh) < k:
        raise ValueError(f"{len(wh)} training boxes cannot give {k} anchors")
    anchors = kmeans_anchors(wh, k, seed=seed)
    return split_levels(anchors, levels), {**anchor_fitness(wh, anchors, ratio), "boxes": len(wh)}

"""The 4-image mosaic (YOLOv4): four letterbox-resized images around a random centre, as array
slices and one shift of the boxes (cheaper than ``albumentations.Mosaic``'s per-cell set-up)."""

from __future__ import annotations

import numpy as np

CENTRE_RANGE = (0.25, 0.75)
"""The mosaic centre is drawn uniformly in this fraction of the output side, on each axis."""


def mosaic_paste(
    items: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    size: int,
    rng: np.random.Generator,
    min_visibility: float,
    fill: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images 0-3 touch a random centre of an ``S x S`` canvas (``fill`` elsewhere) with their
    bottom-right, bottom-left, top-right, top-left corner; what falls outside is cut, and a box
    keeps its visible part while ``min_visibility`` of its area and 1 px each side remain.
    ``items``: four ``(uint8 [h, w, 3], float32 [N, 4] xyxy px, int64 [N])``; returns
    ``(canvas uint8 [S, S, 3], boxes float32 [M, 4] xyxy canvas px, labels int64 [M])``.

    Example:
        >>> one = (np.zeros((4, 4, 3), np.uint8), np.array([[0, 0, 4, 4]], np.float32), np.array([7]))
        >>> canvas, boxes, labels = mosaic_paste([one] * 4, 8, np.random.default_rng(0), 0.25, 114)
        >>> canvas.shape, len(boxes) == len(labels) <= 4
        ((8, 8, 3), True)
    """
    if len(items) != 4:
        raise ValueError(f"a mosaic needs 4 images, got {len(items)}")
    lo, hi = CENTRE_RANGE
    xc, yc = (int(v) for v in rng.uniform(lo * size, hi * size, 2))
    canvas = np.full((size, size, items[0][0].shape[2]), fill, dtype=np.uint8)
    all_boxes, all_labels = [], []
    for k, (image, boxes, labels) in enumerate(items):
        h, w = image.shape[:2]
        x0 = xc - w if k in (0, 2) else xc  # top-left corner of the image on the canvas
        y0 = yc - h if k in (0, 1) else yc
        cx1, cy1 = max(x0, 0), max(y0, 0)
        cx2, cy2 = min(x0 + w, size), min(y0 + h, size)
        if cx2 <= cx1 or cy2 <= cy1:
            continue
        canvas[cy1:cy2, cx1:cx2] = image[cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0]
        shifted = np.asarray(boxes, np.float32).reshape(-1, 4) + np.float32([x0, y0, x0, y0])
        clipped = np.clip(shifted, [cx1, cy1, cx1, cy1], [cx2, cy2, cx2, cy2])
        area = np.prod(shifted[:, 2:] - shifted[:, :2], axis=1)
        sides = clipped[:, 2:] - clipped[:, :2]
        keep = (sides >= 1).all(axis=1) & (sides.prod(axis=1) >= min_visibility * area)
        all_boxes.append(clipped[keep])
        all_labels.append(np.asarray(labels, np.int64).reshape(-1)[keep])
    if not all_boxes:
        return canvas, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    return canvas, np.concatenate(all_boxes), np.concatenate(all_labels)

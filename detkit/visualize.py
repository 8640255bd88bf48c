"""Drawing detections on images: one colour per class, label and score above each box."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour for a class index (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
) -> np.ndarray:
    """Return a copy of ``image`` with boxes, class names and scores drawn.

    Args:
        image: ``H x W x 3`` uint8, RGB or BGR (colours follow the image's order).
        boxes: ``[K, 4]`` xyxy px in the frame of ``image``.
        scores: ``[K]``; labels: ``[K]`` int class indices into ``class_names``.
    """
    out = np.ascontiguousarray(image.copy())
    thickness = max(1, round(min(out.shape[:2]) / 300))
    font_scale = max(0.35, min(out.shape[:2]) / 900)
    taken: dict[tuple[int, int], int] = {}  # label anchor -> labels already there
    for box, score, label in zip(boxes, scores, labels, strict=True):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        color = class_color(int(label))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        name = class_names[int(label)] if 0 <= int(label) < len(class_names) else str(int(label))
        text = f"{name} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        # One box can carry several classes (multi-label NMS): stack their labels downwards.
        stacked = taken.get((x1, ty), 0)
        taken[(x1, ty)] = stacked + 1
        ty += stacked * (th + base + 2)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + 1), color, -1)
        cv2.putText(
            out,
            text,
            (x1 + 1, ty - base + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return out

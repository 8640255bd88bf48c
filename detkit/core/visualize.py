"""Drawing boxes with tags (one colour per class); writing pictures and figures atomically."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from detkit.core.io import write_atomic, write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    """A copy of ``image`` (``H x W x 3`` uint8, RGB or BGR: colours follow its order) with
    ``boxes [K, 4]`` (xyxy px in its frame), class names and ``scores [K]`` drawn in the colours
    of ``labels [K]`` (int indices into ``class_names``)."""
    texts = [
        f"{class_names[int(c)] if 0 <= int(c) < len(class_names) else int(c)} {float(s):.2f}"
        for s, c in zip(scores, labels, strict=True)
    ]
    return draw_boxes(image, boxes, [class_color(int(c)) for c in labels], texts)


def draw_boxes(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]] | np.ndarray,
    colors: Sequence[tuple[int, int, int]],
    texts: Sequence[str | None] | None = None,
    thickness: int | None = None,
    font_scale: float | None = None,
) -> np.ndarray:
    """A copy of ``image`` (``H x W x 3`` uint8) with each box (``[K, 4]`` xyxy px in its frame)
    outlined in its colour and its text (None: none) on a tag at its top-left corner;
    ``thickness`` (px) and ``font_scale`` default by image size."""
    out = np.ascontiguousarray(image.copy())
    side = min(out.shape[:2])
    thickness = thickness or max(1, round(side / 300))
    font_scale = font_scale or max(0.35, side / 900)
    texts = texts if texts is not None else [None] * len(colors)
    taken: dict[tuple[int, int], int] = {}  # tag anchor -> tags already there
    for box, color, text in zip(boxes, colors, texts, strict=True):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        if not text:
            continue
        # a tag above the corner, inside when there is no room; tags at one corner stack down
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        stacked = taken.get((x1, ty), 0)
        taken[(x1, ty)] = stacked + 1
        ty += stacked * (th + base + 2)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + 1), color, -1)
        cv2.putText(out, text, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    return out


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure atomically in ``path``'s suffix's format, through its own Agg canvas (no
    pyplot, so no backend is switched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    return write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=fig.dpi))


def save_image(path: str | Path, image: np.ndarray, bgr: bool = False) -> Path:
    """Encode ``image`` (``uint8 [H, W, 3]`` RGB, BGR with ``bgr``, or ``[H, W]`` gray) in the
    format of ``path``'s suffix and write it atomically (Python writes the file: ``cv2.imwrite``
    crashes on a name that is not UTF-8). Raises ``ValueError`` when encoding fails."""
    path = Path(path)
    pixels = image if bgr or image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    try:
        ok, data = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(pixels))
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"cannot encode an image as {path.suffix or '(no suffix)'}: {path}")
    return write_bytes(path, data.tobytes())

"""An evaluation's worst images, error types colour-coded (:mod:`detkit.eval.errors`), ground truth
white, misses grey; an image weighs its false positives' scores + 1 per miss, and the ``n``
heaviest go to ``worst/NN_<file>.png``, listed in ``worst/index.json``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detkit.core.io import safe_stem, write_json
from detkit.core.protocols import DetectionSplit
from detkit.core.visualize import draw_boxes, save_image
from detkit.eval.errors import ERROR_COLORS, ERROR_TYPES, NOT_SCORED, TP, Classified, type_name

MIN_SIDE = 640  # small images are enlarged so that labels stay readable


@dataclass
class ImageErrors:
    """One image at the gallery threshold: ``dets`` ``(xyxy orig px [4], score, category id,
    type name)`` of each kept detection, the ``missed`` objects' and every non-crowd object's
    (``truth``) xyxy orig px boxes, and its ``weight`` (kept false-positive scores + missed)."""

    image_id: int
    dets: list[tuple[np.ndarray, float, int, str]] = field(default_factory=list)
    missed: list[np.ndarray] = field(default_factory=list)
    truth: list[np.ndarray] = field(default_factory=list)
    weight: float = 0.0

    def counts(self) -> dict[str, int]:
        """Number of each type drawn (``tp`` and the error types)."""
        out = dict.fromkeys(("tp", *ERROR_TYPES), 0)
        for *_, kind in self.dets:
            out[kind] += 1
        out["miss"] = len(self.missed)
        return out


def _xyxy(bbox: list[float]) -> np.ndarray:
    """One COCO ``[x, y, w, h]`` (top-left, orig px) as float64 ``[4]`` xyxy orig px (plain
    arithmetic: an untrained model's evaluation draws ~50k of them)."""
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def image_errors(
    classified: Classified,
    results: list[dict[str, Any]],
    truth: dict[int, list[dict[str, Any]]],
    conf: float,
) -> dict[int, ImageErrors]:
    """Per image, the detections with score ``> conf`` typed by ``classified`` (the breakdown's at
    IoU 0.5 of the ``results``) and the objects of ``truth`` (id -> annotations) none found."""
    out: dict[int, ImageErrors] = {i: ImageErrors(int(i)) for i in truth}
    found: dict[int, set[int]] = defaultdict(set)
    for k, r in enumerate(results):
        code = int(classified.det_type[k])
        if r["score"] <= conf or code == NOT_SCORED:
            continue
        item = out.setdefault(int(r["image_id"]), ImageErrors(int(r["image_id"])))
        kind = type_name(code)
        item.dets.append((_xyxy(r["bbox"]), float(r["score"]), int(r["category_id"]), kind))
        if code == TP:
            found[item.image_id].add(int(classified.target[k]))
        else:
            item.weight += float(r["score"])
    for image_id, anns in truth.items():
        item = out[image_id]
        for a in anns:
            if a.get("iscrowd", 0):
                continue
            item.truth.append(_xyxy(a["bbox"]))
            if a["id"] not in found[image_id]:
                item.missed.append(_xyxy(a["bbox"]))
                item.weight += 1.0
    return out


def _legend(width: int, scale: float) -> np.ndarray:
    """A strip naming each colour: tp, then the error types."""
    strip = np.full((int(34 * scale / 0.5), width, 3), 255, np.uint8)
    x = 6
    for kind in ("tp", *ERROR_TYPES):
        (tw, th), _ = cv2.getTextSize(kind, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        y = strip.shape[0] // 2
        cv2.rectangle(
            strip, (x, y - th // 2 - 4), (x + 18, y + th // 2 + 4), ERROR_COLORS[kind], -1
        )
        cv2.putText(strip, kind, (x + 24, y + th // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
        x += tw + 44
    return strip


def draw_image_errors(
    image: np.ndarray, item: ImageErrors, class_names: dict[int, str]
) -> np.ndarray:
    """A new RGB image: ``image`` (``H x W x 3`` uint8 RGB, the orig px frame of ``item``'s
    boxes) enlarged to :data:`MIN_SIDE`, with the errors drawn and a legend below."""
    s = max(1.0, MIN_SIDE / min(image.shape[:2]))
    out = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR) if s > 1 else image
    scale = max(0.45, min(out.shape[:2]) / 1200)
    dets = sorted(item.dets, key=lambda d: d[1])  # best drawn last
    boxes = [*item.truth, *item.missed, *(d[0] for d in dets)]
    colors = [(255, 255, 255)] * len(item.truth) + [ERROR_COLORS["miss"]] * len(item.missed)
    colors += [ERROR_COLORS[kind] for *_, kind in dets]
    texts = [None] * len(item.truth) + ["miss"] * len(item.missed)
    texts += [
        f"{kind}: {class_names.get(cat, str(cat))} {score:.2f}" for _, score, cat, kind in dets
    ]
    scaled = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * s
    out = draw_boxes(out, scaled, colors, texts, thickness=2, font_scale=scale)
    return np.concatenate([out, _legend(out.shape[1], scale)], axis=0)


def write_worst_images(
    items: dict[int, ImageErrors],
    source: DetectionSplit,
    class_names: dict[int, str],
    out_dir: str | Path,
    n: int,
    conf: float,
) -> list[Path]:
    """Draw the ``n`` images (0: none) with the largest error weight into ``out_dir`` (created),
    with ``index.json`` recording ``conf`` (the items' threshold); returns the PNGs, worst first."""
    if n <= 0:
        return []
    out_dir = Path(out_dir)  # created by the writes (index.json always)
    position = {int(i): k for k, i in enumerate(source.image_ids)}
    ranked = sorted(
        (it for it in items.values() if it.weight > 0 and it.image_id in position),
        key=lambda it: (-it.weight, it.image_id),
    )[:n]
    written, index = [], []
    for rank, item in enumerate(ranked, start=1):
        sample = source.load(position[item.image_id])
        picture = draw_image_errors(sample.image, item, class_names)
        path = save_image(out_dir / f"{rank:02d}_{safe_stem(str(sample.path))}.png", picture)
        written.append(path)
        index.append(
            {
                "rank": rank,
                "file": path.name,
                "image_id": item.image_id,
                "image": str(sample.path),
                "weight": round(item.weight, 4),
                "counts": item.counts(),
            }
        )
    write_json(out_dir / "index.json", {"conf": conf, "iou": 0.5, "images": index}, indent=2)
    return written

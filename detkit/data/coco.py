"""COCO reader and writer: the one place where COCO's ``xywh`` boxes and sparse category ids live.

Everything this module returns uses detkit's conventions: xyxy boxes in orig px (float32),
contiguous int64 labels, RGB uint8 images.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools.coco import COCO

from detkit.data.types import Sample

logger = logging.getLogger(__name__)

MIN_BOX_SIZE = 1.0
"""Boxes narrower or shorter than this (in orig px, after clipping) are dropped."""


class CocoDataset:
    """A COCO-format detection dataset (images on disk plus one ``instances_*.json``).

    Crowd annotations (``iscrowd=1``) are excluded from the samples; boxes are clipped to the
    image and those thinner than ``MIN_BOX_SIZE`` px are dropped; images without any remaining
    annotation are kept as negatives (``[0, 4]`` boxes).

    Attributes:
        ann_file: the annotation json.
        images_dir: the folder that ``file_name`` entries are resolved under.
        class_names: category names, sorted by COCO category id.
        cat_ids: COCO category id of each contiguous label (``cat_ids[label]``).
        image_ids: COCO image ids, sorted; ``load(i)`` reads ``image_ids[i]``.
        coco: the underlying ``pycocotools.coco.COCO`` (for evaluation).
    """

    def __init__(self, ann_file: str | Path, images_dir: str | Path) -> None:
        """Index the annotation file; images are decoded lazily in ``load``.

        Args:
            ann_file: path to a COCO instances json.
            images_dir: folder holding the images named by ``file_name``.

        Raises:
            FileNotFoundError: the annotation file does not exist.
            ValueError: a ``file_name`` escapes ``images_dir`` or an annotation names an
                unknown category.
        """
        self.ann_file = Path(ann_file)
        self.images_dir = Path(images_dir)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.ann_file}")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(str(self.ann_file))
        self.cat_ids: list[int] = sorted(self.coco.getCatIds())
        self.class_names: list[str] = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}
        self.image_ids: list[int] = sorted(self.coco.getImgIds())
        self._paths = [self._resolve(self.coco.imgs[i]["file_name"]) for i in self.image_ids]
        self._targets = [self._image_targets(i) for i in self.image_ids]
        logger.debug(
            "COCO %s: %d images, %d classes", self.ann_file, len(self.image_ids), len(self.cat_ids)
        )

    def __len__(self) -> int:
        """Number of images, negatives included."""
        return len(self.image_ids)

    def load(self, index: int) -> Sample:
        """Decode image ``index`` and return it with its ground truth.

        Args:
            index: position in ``image_ids``, ``0 <= index < len(self)``.

        Returns:
            A ``Sample``: RGB uint8 ``[H, W, 3]`` image, float32 ``[N, 4]`` xyxy boxes in orig
            px clipped to the decoded image, int64 ``[N]`` contiguous labels.

        Raises:
            IndexError: ``index`` is out of range.
            FileNotFoundError: the image file does not exist.
            ValueError: the image file cannot be decoded.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        path = self._paths[index]
        image = read_image(path)
        boxes, labels = self._targets[index]
        h, w = image.shape[:2]
        info = self.coco.imgs[self.image_ids[index]]
        if (info.get("height"), info.get("width")) != (h, w):
            logger.warning(
                "%s: json says %sx%s, decoded %dx%d",
                path,
                info.get("height"),
                info.get("width"),
                h,
                w,
            )
            boxes, labels = _clean_boxes(boxes, labels, h, w)
        return Sample(
            image=image,
            boxes=boxes.copy(),
            labels=labels.copy(),
            image_id=self.image_ids[index],
            path=str(path),
        )

    def _resolve(self, file_name: str) -> Path:
        """Join ``file_name`` under ``images_dir``, refusing names that escape it.

        The check is lexical (``..`` and absolute paths), so symlinks inside ``images_dir``
        that point elsewhere keep working.
        """
        root = os.path.normpath(os.path.abspath(self.images_dir))
        path = os.path.normpath(os.path.join(root, file_name))
        if os.path.commonpath([root, path]) != root:
            raise ValueError(f"{self.ann_file}: file_name {file_name!r} escapes {self.images_dir}")
        return Path(path)

    def _image_targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (xyxy orig px, float32 ``[N, 4]``) and labels (int64 ``[N]``) of one image."""
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        for a in anns:
            if a["category_id"] not in self.cat_id_to_label:
                raise ValueError(
                    f"{self.ann_file}: annotation {a.get('id')} has unknown category_id "
                    f"{a['category_id']}"
                )
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.array([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
        info = self.coco.imgs[image_id]
        return _clean_boxes(boxes, labels, info.get("height"), info.get("width"))


def _clean_boxes(
    boxes: np.ndarray, labels: np.ndarray, height: int | None, width: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image (when its size is known) and drop degenerate ones.

    Args:
        boxes: ``[N, 4]`` xyxy, orig px.
        labels: ``[N]`` int64.
        height: image height in px, or None to skip clipping.
        width: image width in px, or None to skip clipping.

    Returns:
        float32 ``[M, 4]`` boxes and int64 ``[M]`` labels, ``M <= N``, both new arrays.
    """
    boxes = boxes.astype(np.float64)
    if height is not None and width is not None:
        boxes = np.clip(boxes, 0, [width, height, width, height])
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIZE) & (
        (boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIZE
    )
    return boxes[keep].astype(np.float32), labels[keep].astype(np.int64)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB.

    EXIF orientation is ignored, so pixels match the width/height that annotation files record.

    Args:
        path: image file.

    Returns:
        ``uint8`` array ``[H, W, 3]``, RGB.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` exists but cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise ValueError(f"cannot decode image: {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_coco(
    path: str | Path,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
) -> Path:
    """Write a COCO instances json atomically (temporary file, then rename).

    Annotation ids are renumbered ``1..N`` in order (pycocotools mis-scores id 0); ``area``
    (box area, ``w * h``) and ``iscrowd`` (0) are filled where missing. Inputs are not modified.

    Args:
        path: destination json; parent folders are created.
        images: dicts with at least ``id``, ``file_name``, ``height``, ``width``.
        annotations: dicts with at least ``image_id``, ``category_id`` and ``bbox`` as COCO
            ``[x, y, w, h]`` (top-left, absolute px).
        categories: dicts with at least ``id`` and ``name``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: an annotation names an unknown image or category, or has a malformed bbox.
    """
    path = Path(path)
    image_ids = {img["id"] for img in images}
    cat_ids = {cat["id"] for cat in categories}
    anns = []
    for new_id, ann in enumerate(annotations, start=1):
        _check_annotation(ann, image_ids, cat_ids)
        x, y, w, h = (float(v) for v in ann["bbox"])
        area = float(ann.get("area", w * h))
        iscrowd = int(ann.get("iscrowd", 0))
        anns.append({**ann, "id": new_id, "bbox": [x, y, w, h], "area": area, "iscrowd": iscrowd})
    doc = {
        "info": {"description": "written by detkit"},
        "images": [dict(img) for img in images],
        "annotations": anns,
        "categories": [dict(cat) for cat in categories],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, default=_json_default)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _json_default(value: Any) -> Any:
    """Let numpy scalars (np.int64 ids, np.float32 coordinates) through ``json.dump``."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_annotation(ann: dict[str, Any], image_ids: set[Any], cat_ids: set[Any]) -> None:
    """Raise ValueError naming what is wrong with one annotation dict."""
    if ann.get("image_id") not in image_ids:
        raise ValueError(f"annotation {ann} names unknown image_id {ann.get('image_id')}")
    if ann.get("category_id") not in cat_ids:
        raise ValueError(f"annotation {ann} names unknown category_id {ann.get('category_id')}")
    bbox = ann.get("bbox")
    if bbox is None or len(bbox) != 4:
        raise ValueError(f"annotation {ann} needs bbox [x, y, w, h]")

"""The evaluation ground truth of an opened split: free functions over a reader's source.

:func:`ground_truth` is what :func:`detkit.eval.evaluate` scores against: the user's own COCO file
for a clean COCO split, otherwise :func:`coco_document`, the COCO dict built in memory from what the
reader serves (checked boxes, crowd / difficult objects marked ``iscrowd``). Tools that need a file
on disk call :func:`ground_truth_file`, which writes that dict once into a cache folder outside the
dataset under a name holding a hash of its content, so a changed dataset never reuses a stale file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detkit.io import write_text

if TYPE_CHECKING:
    from detkit.data.source import DetectionSource

logger = logging.getLogger(__name__)


def coco_document(source: DetectionSource) -> dict[str, Any]:
    """A reader's split as a COCO dict.

    Image ids are ``source.image_ids``; ``file_name`` is relative to ``source.images_root``;
    width and height are as ``load`` returns the image. Training boxes have ``iscrowd`` 0; crowd
    / difficult boxes ``iscrowd`` 1 and ``ignore`` 1 (pycocotools ignores detections matched to
    them). Boxes are COCO ``[x, y, w, h]`` (top-left, orig px). Annotation ids run ``1..N``.
    """
    images, annotations = [], []
    for index, image_id in enumerate(source.image_ids):
        h, w = source.image_size(index)
        images.append(
            {"id": image_id, "file_name": source.file_name(index), "height": h, "width": w}
        )
        areas, ignore_areas = source.areas(index)
        for (boxes, labels), area, crowd in (
            (source.targets(index), areas, 0),
            (source.ignored(index), ignore_areas, 1),
        ):
            annotations += _annotations(image_id, boxes, labels, area, crowd, source.cat_ids)
    for new_id, ann in enumerate(annotations, start=1):
        ann["id"] = new_id
    categories = [
        {"id": c, "name": n, "supercategory": ""}
        for c, n in zip(source.cat_ids, source.class_names, strict=True)
    ]
    return {
        "info": {"description": f"written by detkit from {source.report.name}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _annotations(
    image_id: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    areas: np.ndarray | None,
    crowd: int,
    cat_ids: list[int],
) -> list[dict[str, Any]]:
    """COCO annotation dicts for one image's xyxy orig-px boxes (ids filled by the caller)."""
    out = []
    for j, ((x1, y1, x2, y2), label) in enumerate(
        zip(boxes.tolist(), labels.tolist(), strict=True)
    ):
        w, h = x2 - x1, y2 - y1
        ann = {
            "image_id": image_id,
            "category_id": cat_ids[label],
            "bbox": [x1, y1, w, h],
            "area": float(areas[j]) if areas is not None else w * h,
            "iscrowd": crowd,
        }
        if crowd:
            ann["ignore"] = 1
        out.append(ann)
    return out


def ground_truth(source: DetectionSource) -> Path | dict[str, Any]:
    """What evaluation scores ``source`` against, with no file written.

    Returns:
        ``source.gt_file`` (the user's COCO file, when the checks changed nothing evaluation
        sees), else :func:`coco_document` of ``source``.
    """
    return source.gt_file if source.gt_file is not None else coco_document(source)


def ground_truth_file(source: DetectionSource) -> Path:
    """:func:`ground_truth` of ``source`` as a COCO json path, for tools that read files.

    ``source.gt_file`` when set; otherwise :func:`coco_document` written atomically, once, to
    ``source.cache_dir/gt/<split>-<format>-<first 16 hex of the json's sha1>.json`` (an existing
    file of that name has the same content and is reused).
    """
    if source.gt_file is not None:
        return source.gt_file
    text = json.dumps(coco_document(source))
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
    name = _slug(source.report.name)
    name = name if source.format in name else f"{source.format}-{name}"
    path = source.cache_dir / "gt" / f"{name}-{digest}.json"
    if not path.is_file():
        write_text(path, text)
        logger.info("evaluation ground truth of %s written to %s", source.report.name, path)
    return path


def _slug(text: str) -> str:
    """``text`` reduced to a file-name-safe ``a-b-c`` (e.g. ``"val (voc)"`` -> ``"val-voc"``)."""
    words = "".join(c if c.isalnum() else " " for c in text).split()
    return "-".join(words)[:60] or "split"


def default_cache_dir() -> Path:
    """``$DETKIT_HOME/cache`` (DETKIT_HOME defaults to ``~/.cache/detkit``)."""
    return Path(os.environ.get("DETKIT_HOME", "~/.cache/detkit")).expanduser() / "cache"

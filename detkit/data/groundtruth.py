"""COCO documents: the one builder (:func:`coco_json`) and reader (:func:`read_coco_json`) of
COCO files, and the evaluation ground truth of an opened split (:func:`ground_truth`)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detkit.boxes.coords import box_convert
from detkit.core.io import write_json, write_text
from detkit.data.check import DataError

if TYPE_CHECKING:
    from detkit.data.source import DetectionSource

logger = logging.getLogger(__name__)


def coco_document(
    source: DetectionSource, file_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """A reader's split as a COCO dict (:func:`coco_json`): ``file_name`` relative to
    ``images_root`` (or ``file_names[i]``), sizes as ``load`` returns them, boxes ``[x, y, w, h]``
    orig px, crowd / difficult ones ``iscrowd`` 1 and ``ignore`` 1 (pycocotools ignores
    detections on them), ``area`` the source's own (COCO mask areas) or ``w * h``."""
    images, annotations = [], []
    for index, image_id in enumerate(source.image_ids):
        h, w = source.image_size(index)
        name = source.file_name(index) if file_names is None else file_names[index]
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        areas, hard_areas = source.areas(index)
        annotations += _annotations(image_id, *source.targets(index), areas, 0, source.cat_ids)
        annotations += _annotations(image_id, *source.ignored(index), hard_areas, 1, source.cat_ids)
    names = zip(source.cat_ids, source.class_names, strict=True)
    categories = [{"id": c, "name": n, "supercategory": ""} for c, n in names]
    about = f"written by detkit from {source.report.name}"
    return coco_json(images, annotations, categories, about)


def _annotations(
    image_id: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    areas: np.ndarray | None,
    crowd: int,
    cat_ids: list[int],
) -> list[dict[str, Any]]:
    """COCO annotation dicts for one image's ``[N, 4]`` xyxy orig-px boxes (no ids)."""
    xywh = box_convert(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), "xyxy", "xywh")
    out = []
    for j, (bbox, label) in enumerate(zip(xywh.tolist(), labels.tolist(), strict=True)):
        ann = {"image_id": image_id, "category_id": cat_ids[label], "bbox": bbox, "iscrowd": crowd}
        if areas is not None:
            ann["area"] = float(areas[j])
        if crowd:
            ann["ignore"] = 1
        out.append(ann)
    return out


def coco_json(
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    description: str = "written by detkit",
) -> dict[str, Any]:
    """A checked COCO instances dict (inputs not modified): annotation ids ``1..N`` (pycocotools
    mis-scores id 0), ``bbox`` (``[x, y, w, h]`` px) floats, ``area`` and ``iscrowd`` filled;
    ValueError for an unknown image or category or a malformed bbox."""
    image_ids = {img["id"] for img in images}
    cat_ids = {cat["id"] for cat in categories}
    anns = []
    for new_id, ann in enumerate(annotations, start=1):
        _check_annotation(ann, image_ids, cat_ids)
        anns.append({**ann, "id": new_id, "bbox": [float(v) for v in ann["bbox"]]})
    repair_annotations(anns)
    return {
        "info": {"description": description},
        "images": [dict(img) for img in images],
        "annotations": anns,
        "categories": [dict(cat) for cat in categories],
    }


def write_coco(
    path: str | Path,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
) -> Path:
    """Write :func:`coco_json` of the three lists to ``path`` atomically; returns ``path``
    (ValueError as :func:`coco_json`: nothing is written then)."""
    return write_json(path, coco_json(images, annotations, categories))


def read_coco_bytes(path: str | Path) -> bytes:
    """The bytes of a COCO json (hashed to find its cached split); FileNotFoundError when
    ``path`` is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    return path.read_bytes()


def read_coco_json(path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """Parse a COCO json (UTF-8, a BOM allowed; ``data``: its bytes when read already);
    FileNotFoundError, or DataError for malformed JSON (line, column), not UTF-8, not an object."""
    path = Path(path)
    data = read_coco_bytes(path) if data is None else data
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path} line {e.lineno} column {e.colno}: malformed JSON: {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', got {type(doc).__name__}")
    return doc


def repair_annotations(anns: list[dict[str, Any]]) -> list[str]:
    """Fix pycocotools' traps in ``anns`` in place and say what was done: ids < 1, missing or
    repeated are renumbered ``1..N`` (``COCOeval`` takes matched id 0 for "unmatched"); a
    missing ``area`` becomes ``w * h``, a missing ``iscrowd`` 0."""
    fixes = []
    ids = [a.get("id") for a in anns]
    if anns and (
        None in ids or min(i for i in ids if i is not None) < 1 or len(set(ids)) < len(ids)
    ):
        for new_id, a in enumerate(anns, start=1):
            a["id"] = new_id
        fixes.append(f"renumbered {len(anns)} annotation ids 1..N (ids < 1, missing or repeated)")
    no_area = [a for a in anns if "area" not in a]
    for a in no_area:
        a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
    if no_area:
        fixes.append(f"filled 'area' = w * h for {len(no_area)} annotations")
    no_crowd = [a for a in anns if "iscrowd" not in a]
    for a in no_crowd:
        a["iscrowd"] = 0
    if no_crowd:
        fixes.append(f"filled 'iscrowd' = 0 for {len(no_crowd)} annotations")
    return fixes


def _check_annotation(ann: dict[str, Any], image_ids: set[Any], cat_ids: set[Any]) -> None:
    """Raise ValueError naming what is wrong with one annotation dict."""
    if ann.get("image_id") not in image_ids:
        raise ValueError(f"annotation {ann} names unknown image_id {ann.get('image_id')}")
    if ann.get("category_id") not in cat_ids:
        raise ValueError(f"annotation {ann} names unknown category_id {ann.get('category_id')}")
    bbox = ann.get("bbox")
    if bbox is None or len(bbox) != 4:
        raise ValueError(f"annotation {ann} needs bbox [x, y, w, h]")


def ground_truth(source: DetectionSource) -> Path | dict[str, Any]:
    """What evaluation scores ``source`` against, with no file written: ``source.gt_file``, else
    :func:`coco_document` of ``source``."""
    return source.gt_file if source.gt_file is not None else coco_document(source)


def ground_truth_file(source: DetectionSource) -> Path:
    """:func:`ground_truth` of ``source`` as a COCO json path: ``source.gt_file``, else
    :func:`coco_document` written once to ``cache_dir/gt/<split>-<format>-<sha1[:16]>.json``
    (an existing file of that name has the same content and is reused)."""
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

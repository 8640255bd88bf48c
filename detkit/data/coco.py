"""COCO reader and writer: the one place where COCO's ``xywh`` boxes and sparse category ids live.

Everything this module returns uses detkit's conventions: xyxy boxes in orig px (float32),
contiguous int64 labels, RGB uint8 images. Files written by other tools are read as they come:
extra fields (keypoints, segmentation in any shape, licences) are ignored, ``file_name`` may be
relative to the images folder or to the json's folder, or absolute inside either (how they were
resolved is logged once), and an unused "background" category is dropped.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from detkit.data.check import DataError, DataReport
from detkit.data.groundtruth import read_coco_json, write_coco
from detkit.data.images import MAX_PIXELS, MIN_IMAGE_SIDE, read_image
from detkit.data.source import DetectionSource, ImageEntry
from detkit.ops.convert import box_convert

logger = logging.getLogger(__name__)

__all__ = ["CocoDataset", "read_image", "write_coco"]

_BACKGROUND_NAMES = ("background", "__background__")


class CocoDataset(DetectionSource):
    """A COCO-format detection split (images on disk plus one ``instances_*.json``).

    Crowd annotations (``iscrowd=1``) are kept out of training and passed to evaluation; images
    without annotations are kept as negatives; every file and box is checked when the split is
    opened (see :mod:`detkit.data.check` and :class:`~detkit.data.source.DetectionSource`).

    Attributes:
        source_file: the user's annotation json (never written to).
        images_dir: the folder that ``file_name`` entries are resolved under.
        class_names: category names, sorted by COCO category id.
        cat_ids: COCO category id of each contiguous label (``cat_ids[label]``).
        image_ids: COCO image ids, sorted; ``load(i)`` reads ``image_ids[i]``.
        gt_file: ``source_file`` when the checks changed nothing evaluation sees, else None
            (see :func:`detkit.data.groundtruth.ground_truth`).
    """

    format = "coco"

    def __init__(
        self,
        ann_file: str | Path,
        images_dir: str | Path,
        *,
        skip_invalid: bool = False,
        name: str | None = None,
        max_pixels: int = MAX_PIXELS,
        min_image_side: int = MIN_IMAGE_SIDE,
        cache_dir: str | Path | None = None,
        decode_workers: int | None = None,
    ) -> None:
        """Index and check the split; images are decoded lazily in ``load``.

        Args:
            ann_file: path to a COCO instances json.
            images_dir: folder holding the images named by ``file_name``.
            skip_invalid: skip (and count) invalid entries instead of raising.
            name: the split's name in the report (default: the json's file name).
            max_pixels: decompression-bomb limit (width x height).
            min_image_side: images with a shorter side (px) are skipped.
            cache_dir: where a cleaned ground-truth copy goes if one is needed.
            decode_workers: processes that decode every image once at opening.

        Raises:
            FileNotFoundError: the annotation file does not exist.
            DataError: the json is malformed (named with its line), or it has invalid entries
                (unknown ``category_id`` or ``image_id``, a malformed annotation, a duplicate
                image id, a ``file_name`` outside both ``images_dir`` and the json's folder) and
                ``skip_invalid`` is False.
        """
        self.source_file = Path(ann_file)
        self.images_dir = Path(images_dir)
        report = DataReport(name=name or f"coco {self.source_file.name}", skip_invalid=skip_invalid)
        doc = read_coco_json(self.source_file)
        anns = _list_field(doc, "annotations", self.source_file, required=False)
        cats = self._categories(doc, anns, report)
        entries = self._entries(doc, anns, cats, report)
        super().__init__(
            entries,
            [c["name"] for c in cats],
            [c["id"] for c in cats],
            report,
            self.images_dir,
            max_pixels=max_pixels,
            min_image_side=min_image_side,
            cache_dir=cache_dir,
            decode_workers=decode_workers,
            gt_file=self.source_file,
        )

    def protected_dirs(self) -> list[Path]:
        """The images folder and the annotation file's folder."""
        return [self.images_dir, self.source_file.parent]

    def _categories(
        self, doc: dict[str, Any], anns: list[Any], report: DataReport
    ) -> list[dict[str, Any]]:
        """Valid categories sorted by id; an unused "background" category is dropped."""
        used = {a.get("category_id") for a in anns if isinstance(a, dict)}
        cats, seen = [], set()
        for k, cat in enumerate(_list_field(doc, "categories", self.source_file, required=False)):
            if not isinstance(cat, dict) or not _is_int(cat.get("id")) or "name" not in cat:
                report.add("ann_malformed", f"{self.source_file} category #{k}: {cat!r:.80}")
                continue
            if cat["id"] in seen:
                report.add(
                    "ann_malformed", f"{self.source_file}: duplicate category id {cat['id']}"
                )
                continue
            seen.add(cat["id"])
            if str(cat["name"]).lower() in _BACKGROUND_NAMES and cat["id"] not in used:
                report.add("category_background", f"{self.source_file} category id {cat['id']}")
                continue
            cats.append({"id": int(cat["id"]), "name": str(cat["name"])})
        return sorted(cats, key=lambda c: c["id"])

    def _entries(
        self,
        doc: dict[str, Any],
        anns: list[Any],
        cats: list[dict[str, Any]],
        report: DataReport,
    ) -> list[ImageEntry]:
        """One :class:`ImageEntry` per valid image, sorted by id, with its annotations."""
        images = self._images(doc, report)
        to_label = {c["id"]: i for i, c in enumerate(cats)}
        per_image: dict[int, list[tuple[list[float], int, float, bool]]] = defaultdict(list)
        seen_ids: set[Any] = set()
        for k, ann in enumerate(anns):
            parsed = self._annotation(k, ann, images, to_label, report, seen_ids)
            if parsed is not None:
                per_image[ann["image_id"]].append(parsed)
        entries = []
        for image_id in sorted(images):
            info = images[image_id]
            rows = per_image.get(image_id, [])
            train = [r for r in rows if not r[3]]
            crowd = [r for r in rows if r[3]]
            path, alt = info["path"], self.images_dir / Path(info["file_name"]).name
            entries.append(
                ImageEntry(
                    path=path,
                    image_id=image_id,
                    where=f"{self.source_file} image id {image_id}",
                    boxes=_xyxy([r[0] for r in train]),
                    labels=np.array([r[1] for r in train], dtype=np.int64),
                    ignore_boxes=_xyxy([r[0] for r in crowd]),
                    ignore_labels=np.array([r[1] for r in crowd], dtype=np.int64),
                    declared=info["declared"],
                    alt_path=alt if alt != path else None,
                    areas=np.array([r[2] for r in train], dtype=np.float64),
                    ignore_areas=np.array([r[2] for r in crowd], dtype=np.float64),
                )
            )
        return entries

    def _images(self, doc: dict[str, Any], report: DataReport) -> dict[int, dict[str, Any]]:
        """Valid image entries by id: resolved path and declared ``(height, width)``."""
        images: dict[int, dict[str, Any]] = {}
        self._dropped_ids: set[Any] = set()
        roots = list(dict.fromkeys([self.images_dir, self.source_file.parent]))
        resolved_by: dict[str, int] = defaultdict(int)
        for k, img in enumerate(_list_field(doc, "images", self.source_file, required=True)):
            if not isinstance(img, dict) or not _is_int(img.get("id")):
                report.add("ann_malformed", f"{self.source_file} image #{k}: no integer 'id'")
                continue
            where = f"{self.source_file} image id {img['id']}"
            if not isinstance(img.get("file_name"), str) or not img["file_name"]:
                report.add("ann_malformed", f"{where}: no 'file_name'")
                continue
            if img["id"] in images:
                report.add("image_id_duplicate", f"{where}: also {img['file_name']!r}")
                continue
            path, how = _resolve(roots, img["file_name"])
            if path is None:
                self._dropped_ids.add(img["id"])
                folders = " and ".join(str(r) for r in roots)
                hint = (
                    " (an absolute name must lie under one of them: point data.train_images /"
                    " val_images at the folder that holds the images)"
                    if os.path.isabs(img["file_name"])
                    else ""
                )
                report.add(
                    "image_escapes_root",
                    f"{where}: file_name {img['file_name']!r} is outside {folders}{hint}",
                )
                continue
            resolved_by[how] += 1
            h, w = img.get("height"), img.get("width")
            declared = (int(h), int(w)) if _is_int(h) and _is_int(w) and h > 0 and w > 0 else None
            images[img["id"]] = {"path": path, "file_name": img["file_name"], "declared": declared}
        if set(resolved_by) - {"relative to the images folder"}:
            counts = ", ".join(f"{n} {how}" for how, n in resolved_by.items())
            logger.info("%s: image file names resolved: %s", self.source_file, counts)
        return images

    def _annotation(
        self,
        k: int,
        ann: Any,
        images: dict[int, Any],
        to_label: dict[int, int],
        report: DataReport,
        seen_ids: set[Any],
    ) -> tuple[list[float], int, float, bool] | None:
        """``(xywh, label, area, crowd)`` of one annotation, or None (counted) if unusable."""
        if not isinstance(ann, dict):
            report.add("ann_malformed", f"{self.source_file} annotation #{k}: not an object")
            return None
        ann_id = ann.get("id")
        where = f"{self.source_file} annotation id {ann_id}"
        if ann_id in seen_ids or ann_id == 0:
            report.add("ann_id_duplicate", where)
        seen_ids.add(ann_id)
        bbox = ann.get("bbox")
        if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(map(_is_num, bbox)):
            report.add("ann_malformed", f"{where}: bbox {bbox!r:.60} is not [x, y, w, h]")
            return None
        if ann.get("image_id") in self._dropped_ids:
            return None  # its image was skipped, and counted
        if ann.get("image_id") not in images:
            report.add(
                "ann_unknown_image", f"{where}: image_id {ann.get('image_id')!r} not in images"
            )
            return None
        if ann.get("category_id") not in to_label:
            cats = sorted(to_label)
            report.add(
                "ann_unknown_class",
                f"{where}: category_id {ann.get('category_id')!r} not in categories {cats}",
            )
            return None
        x, y, w, h = (float(v) for v in bbox)
        area = ann.get("area")
        area = float(area) if _is_num(area) and math.isfinite(area) else w * h
        return [x, y, w, h], to_label[ann["category_id"]], area, bool(ann.get("iscrowd", 0))


def _list_field(doc: dict[str, Any], key: str, path: Path, required: bool) -> list[Any]:
    value = doc.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise DataError(f"{path}: '{key}' must be a list, got {type(value).__name__}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _xyxy(xywh: list[list[float]]) -> np.ndarray:
    """COCO ``[x, y, w, h]`` (top-left, px) rows to float64 ``[N, 4]`` xyxy px."""
    return box_convert(np.array(xywh, dtype=np.float64).reshape(-1, 4), "xywh", "xyxy")


def _resolve(roots: list[Path], file_name: str) -> tuple[Path | None, str]:
    """Where a COCO ``file_name`` points, and how it was resolved; ``(None, "")`` when it
    leaves every root.

    ``roots`` are the images folder, then the json's folder. A relative name is looked up under
    each in turn (the first that holds the file wins; the first root when none does, so a
    missing file is reported there); an absolute name must lie inside one of them. The check
    is lexical (``..`` and absolute paths), so symlinks inside a root that point elsewhere keep
    working.
    """
    absolute = os.path.isabs(file_name)
    inside = []
    for k, root in enumerate(roots):
        base = os.path.normpath(os.path.abspath(root))
        path = os.path.normpath(os.path.join(base, file_name))
        if os.path.commonpath([base, path]) == base:
            where = "images folder" if k == 0 else "json's folder"
            how = f"absolute, inside the {where}" if absolute else f"relative to the {where}"
            inside.append((Path(path), how))
    if not inside:
        return None, ""
    if len(inside) > 1 and not absolute:
        return next(((p, h) for p, h in inside if p.exists()), inside[0])
    return inside[0]

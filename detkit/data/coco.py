"""COCO reader: the one place COCO's ``xywh`` boxes and sparse category ids are read; what it
returns is xyxy orig px float32, contiguous int64 labels, uint8 RGB. Extra fields are ignored;
``file_name`` may be relative to the images folder or the json's, or absolute inside either."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from detkit.boxes.coords import box_convert
from detkit.data.check import DataError, DataReport
from detkit.data.groundtruth import read_coco_bytes, read_coco_json, write_coco
from detkit.data.images import read_image
from detkit.data.index import EntryTable, split_key
from detkit.data.source import DetectionSource, SourceOptions

logger = logging.getLogger(__name__)

__all__ = ["CocoDataset", "read_image", "write_coco"]

_BACKGROUND_NAMES = ("background", "__background__")


class CocoDataset(DetectionSource):
    """A COCO split (images plus one ``instances_*.json``, never written to); crowd boxes are
    evaluation-only, images without annotations negatives; labels follow sorted category ids."""

    format = "coco"

    def __init__(
        self,
        ann_file: str | Path,
        images_dir: str | Path | None,
        *,
        skip_invalid: bool = False,
        name: str | None = None,
        split: str = "",
        **options: Unpack[SourceOptions],
    ) -> None:
        """Index and check the split. ``images_dir`` None: the :func:`image_folders` entry
        holding the images; ``split`` (``train``/``val``) names the folders to try and the key
        to set when none does. Raises FileNotFoundError (no annotation file) or DataError
        (malformed json, invalid entries and not ``skip_invalid``, or no folder holds images)."""
        self.source_file = Path(ann_file)
        report = DataReport(name=name or f"coco {self.source_file.name}", skip_invalid=skip_invalid)
        data = read_coco_bytes(self.source_file)
        self.images_dir, missing = self._images_folder(data, images_dir, split)
        super().__init__(report, self.images_dir, **options)
        identity = {"format": "coco", "ann": os.path.abspath(self.source_file),
                    "images": os.path.abspath(self.images_dir)}  # fmt: skip
        settings = {"max_pixels": self.max_pixels, "min_image_side": self.min_image_side,
                    "skip_invalid": skip_invalid}  # fmt: skip
        key = split_key(identity, data, settings)
        if not missing and self._open_cached(key, gt_file=self.source_file):
            return
        doc = read_coco_json(self.source_file, data)
        del data
        anns = _list_field(doc, "annotations", self.source_file, required=False)
        cats = self._categories(doc, anns)
        table = self._table(doc, anns, cats)
        del doc, anns
        if missing:  # after the entries' own errors, which name the annotation to fix
            report.raise_if_invalid()
            raise DataError(missing)
        names, ids = [c["name"] for c in cats], [c["id"] for c in cats]
        self._check_table(table, names, ids, gt_file=self.source_file, cache_key=key)

    def protected_dirs(self) -> list[Path]:
        """The images folder and the annotation file's folder."""
        return [self.images_dir, self.source_file.parent]

    def _images_folder(self, data: bytes, given: str | Path | None, split: str) -> tuple[Path, str]:
        """``(the images folder, "")``: ``given``, or the candidate of :func:`image_folders`
        holding most of the first ``file_name`` entries; when no folder holds any of them,
        ``(a fallback, the one-line error)`` naming the folders tried and the key to set."""
        key = f"data.{split}_images" if split else "data.train_images / data.val_images"
        fallback = Path(given) if given is not None else self.source_file.parent
        sample = _first_file_names(data)
        if not sample or (given is not None and _found(fallback, self.source_file.parent, sample)):
            return fallback, ""
        folders = image_folders(self.source_file, split)
        hits = [_found(folder, self.source_file.parent, sample) for folder in folders]
        best = folders[hits.index(max(hits))] if max(hits) > 0 else None
        if given is not None:
            where = f"they are in {best}: set {key}={best}" if best else f"set {key}=FOLDER"
            return fallback, (
                f"{self.source_file}: none of its images (e.g. {sample[0]!r}) is in {given} "
                f"({key}); {where}"
            )
        if best is not None:
            if best != self.source_file.parent:
                logger.info("%s: images found in %s", self.source_file, best)
            return best, ""
        tried = ", ".join(str(f) for f in folders)
        return fallback, (
            f"{self.source_file}: none of its images found (e.g. {sample[0]!r}); looked in "
            f"{tried}: set {key}=FOLDER (relative to data.root, or absolute)"
        )

    def _categories(self, doc: dict[str, Any], anns: list[Any]) -> list[dict[str, Any]]:
        """Valid categories sorted by id; an unused "background" category is dropped."""
        used = {a.get("category_id") for a in anns if isinstance(a, dict)}
        cats, seen, src = [], set(), self.source_file
        for k, cat in enumerate(_list_field(doc, "categories", src, required=False)):
            if not isinstance(cat, dict) or not _is_int(cat.get("id")) or "name" not in cat:
                self.report.add("ann_malformed", f"{src} category #{k}: {cat!r:.80}")
                continue
            if cat["id"] in seen:
                self.report.add("ann_malformed", f"{src}: duplicate category id {cat['id']}")
                continue
            seen.add(cat["id"])
            if str(cat["name"]).lower() in _BACKGROUND_NAMES and cat["id"] not in used:
                self.report.add("category_background", f"{src} category id {cat['id']}")
                continue
            cats.append({"id": int(cat["id"]), "name": str(cat["name"])})
        return sorted(cats, key=lambda c: c["id"])

    def _table(
        self, doc: dict[str, Any], anns: list[Any], cats: list[dict[str, Any]]
    ) -> EntryTable:
        """The :class:`EntryTable` of the valid images (sorted by id) and their annotations."""
        images = self._images(doc)
        ids = sorted(images)
        row_of = {image_id: row for row, image_id in enumerate(ids)}
        row_of.update(dict.fromkeys(self._dropped_ids, _DROPPED))
        to_label = {c["id"]: i for i, c in enumerate(cats)}
        rows, xywh, labels, areas, crowd = self._annotations(anns, row_of, to_label)
        order = np.argsort(rows, kind="stable")  # grouped by image, file order within one
        paths = [images[i]["path"] for i in ids]
        alts = [self.images_dir / Path(images[i]["file_name"]).name for i in ids]
        image_ids = np.array(ids, dtype=np.int64)
        source = self.source_file
        return EntryTable(
            paths=paths,
            image_ids=image_ids,
            where=lambda row: f"{source} image id {image_ids[row]}",
            declared=np.array(
                [images[i]["declared"] or (0, 0) for i in ids], dtype=np.int64
            ).reshape(-1, 2),
            owner=rows[order],
            boxes=box_convert(xywh[order], "xywh", "xyxy"),
            labels=labels[order],
            crowd=crowd[order],
            areas=areas[order],
            alt_paths=[a if a != p else None for a, p in zip(alts, paths, strict=True)],
        )

    def _annotations(
        self, anns: list[Any], row_of: dict[Any, int], to_label: dict[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(image row, xywh, label, area, crowd)`` arrays of the usable annotations; the
        others are counted (silently when their image was skipped). No call per annotation."""
        src, report = self.source_file, self.report
        n = len(anns)
        is_dict = np.fromiter((type(a) is dict for a in anns), bool, n)
        report.add_rows("ann_malformed", np.flatnonzero(~is_dict),
                        lambda k: f"{src} annotation #{k}: not an object")  # fmt: skip
        dicts = [a if type(a) is dict else {} for a in anns]
        ann_ids = [a.get("id") for a in dicts]
        self._count_duplicate_ids(ann_ids, is_dict)
        bbox = [a.get("bbox") for a in dicts]
        good_box, xywh = _boxes(bbox)
        good_box &= is_dict

        def where(k: int) -> str:
            return f"{src} annotation id {ann_ids[k]}"

        report.add_rows("ann_malformed", np.flatnonzero(is_dict & ~good_box),
                        lambda k: f"{where(k)}: bbox {bbox[k]!r:.60} is not [x, y, w, h]")  # fmt: skip
        image_ids = [a.get("image_id") for a in dicts]
        rows = np.fromiter((_get(row_of, i) for i in image_ids), np.int64, n)
        unknown = good_box & (rows == _UNKNOWN)
        report.add_rows("ann_unknown_image", np.flatnonzero(unknown), lambda k: (
            f"{where(k)}: image_id {image_ids[k]!r} not in images"))  # fmt: skip
        cat_ids = [a.get("category_id") for a in dicts]
        labels = np.fromiter((_get(to_label, c) for c in cat_ids), np.int64, n)
        known = good_box & (rows >= 0)
        cats = sorted(to_label)
        report.add_rows("ann_unknown_class", np.flatnonzero(known & (labels < 0)), lambda k: (
            f"{where(k)}: category_id {cat_ids[k]!r} not in categories {cats}"))  # fmt: skip
        keep = np.flatnonzero(known & (labels >= 0))
        area = np.fromiter((a.get("area") if type(a.get("area")) in (int, float) else math.nan
                            for a in dicts), np.float64, n)[keep]  # fmt: skip
        xywh = xywh[keep]
        area = np.where(np.isfinite(area), area, xywh[:, 2] * xywh[:, 3])
        crowd = np.fromiter((bool(a.get("iscrowd", 0)) for a in dicts), bool, n)[keep]
        return rows[keep], xywh, labels[keep], area, crowd

    def _count_duplicate_ids(self, ann_ids: list[Any], is_dict: np.ndarray) -> None:
        """Count repeated (and zero) annotation ids, in file order (renumbered for evaluation)."""
        src = self.source_file
        if all(type(i) is int for i in ann_ids):
            ids = np.array(ann_ids, dtype=np.int64).reshape(-1)
            _, first = np.unique(ids, return_index=True)
            repeated = np.ones(len(ids), dtype=bool)
            repeated[first] = False
            flagged = is_dict & (repeated | (ids == 0))
        else:  # None, strings, floats: compared as Python values
            seen: set[Any] = set()
            flagged = np.zeros(len(ann_ids), dtype=bool)
            for k, i in enumerate(ann_ids):
                if is_dict[k]:
                    flagged[k] = _hashable(i) in seen or i == 0
                    seen.add(_hashable(i))
        self.report.add_rows("ann_id_duplicate", np.flatnonzero(flagged),
                        lambda k: f"{src} annotation id {ann_ids[k]}")  # fmt: skip

    def _images(self, doc: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """Valid image entries by id: resolved path and declared ``(height, width)``."""
        images: dict[int, dict[str, Any]] = {}
        self._dropped_ids: set[Any] = set()
        roots = list(dict.fromkeys([self.images_dir, self.source_file.parent]))
        resolved_by: dict[str, int] = defaultdict(int)
        for k, img in enumerate(_list_field(doc, "images", self.source_file, required=True)):
            if not isinstance(img, dict) or not _is_int(img.get("id")):
                self.report.add("ann_malformed", f"{self.source_file} image #{k}: no integer 'id'")
                continue
            where = f"{self.source_file} image id {img['id']}"
            if not isinstance(img.get("file_name"), str) or not img["file_name"]:
                self.report.add("ann_malformed", f"{where}: no 'file_name'")
                continue
            if img["id"] in images:
                self.report.add("image_id_duplicate", f"{where}: also {img['file_name']!r}")
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
                self.report.add(
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


def _list_field(doc: dict[str, Any], key: str, path: Path, required: bool) -> list[Any]:
    value = doc.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise DataError(f"{path}: '{key}' must be a list, got {type(value).__name__}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_UNKNOWN, _DROPPED = -1, -2  # an annotation's image row: not listed / listed but skipped


def _get(table: dict[Hashable, int], key: object) -> int:
    """``table[key]``, or :data:`_UNKNOWN` (also for an unhashable key from a malformed file)."""
    try:
        return table.get(key, _UNKNOWN)
    except TypeError:
        return _UNKNOWN


def _hashable(value: object) -> Hashable:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _boxes(bbox: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Which entries are ``[x, y, w, h]`` lists of numbers, and float64 ``[N, 4]`` of them
    (zeros elsewhere). One array conversion when every entry is well formed."""
    n = len(bbox)
    try:
        if (
            {type(b) for b in bbox} <= {list, tuple}
            and all(len(b) == 4 for b in bbox)
            and {type(v) for v in itertools.chain.from_iterable(bbox)} <= {int, float}
        ):
            return np.ones(n, dtype=bool), np.array(bbox, dtype=np.float64).reshape(n, 4)
    except (TypeError, ValueError, OverflowError):
        pass
    good = np.array([isinstance(b, list | tuple) and len(b) == 4 and all(map(_is_num, b))
                     for b in bbox], dtype=bool).reshape(n)  # fmt: skip
    out = np.zeros((n, 4), dtype=np.float64)
    if good.any():
        out[good] = np.array([bbox[k] for k in np.flatnonzero(good)], dtype=np.float64)
    return good, out


_JSON_PREFIXES = ("instances_", "person_keypoints_", "captions_")


def image_folders(ann_file: Path, split: str = "") -> list[Path]:
    """Where a COCO json's images usually are, in the order tried; ``<split>`` is the json's
    name without ``instances_``, ``split`` and ``split + "2017"``.

    Example:
        >>> [str(p) for p in image_folders(Path("/d/annotations/instances_val2017.json"))][:4]
        ['/d/annotations', '/d/annotations/images', '/d/annotations/images/val2017', '/d/images/val2017']
    """
    here, up = ann_file.parent, ann_file.parent.parent
    stem = ann_file.name.split(".")[0]
    for prefix in _JSON_PREFIXES:
        stem = stem.removeprefix(prefix)
    names = [n for n in dict.fromkeys([stem, split, f"{split}2017" if split else ""]) if n]
    folders = [here, here / "images", *(here / "images" / n for n in names)]
    folders += [*(up / "images" / n for n in names), *(up / n for n in names), up / "images", up]
    return list(dict.fromkeys(folders))


_FILE_NAME = re.compile(rb'"file_name"\s*:\s*("(?:[^"\\]|\\.)*")')


def _first_file_names(data: bytes, count: int = 16) -> list[str]:
    r"""The first ``count`` relative ``file_name`` strings, without parsing the json.

    Example:
        >>> _first_file_names(b'{"images": [{"file_name": "a\\/1.jpg"}, {"file_name": "/x.jpg"}]}')
        ['a/1.jpg']
    """
    names = []
    for match in _FILE_NAME.finditer(data):
        try:
            name = json.loads(match.group(1))
        except ValueError:
            continue
        if name and not os.path.isabs(name):
            names.append(name)
            if len(names) == count:
                break
    return names


def _found(folder: Path, json_folder: Path, names: list[str]) -> int:
    """How many of ``names`` resolve to an existing file with ``folder`` as images folder."""
    roots = list(dict.fromkeys([folder, json_folder]))
    return sum(
        1
        for n in names
        if ((path := _resolve(roots, n)[0]) is not None and path.is_file())
        or (folder / Path(n).name).is_file()  # the base-name fallback of ImageEntry.alt_path
    )


def _resolve(roots: list[Path], file_name: str) -> tuple[Path | None, str]:
    """Where ``file_name`` points under ``roots`` (images folder, then the json's; the first
    holding the file, else the first) and how; ``(None, "")`` when it leaves every root. The
    check is lexical, so symlinks inside a root keep working."""
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

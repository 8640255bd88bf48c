"""Writing opened splits as COCO, VOC or YOLO: the copy is what training sees (checked, clipped);
images are copied or linked unchanged, but one whose EXIF tag the labels ignored is upright PNG."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detkit.core.io import decodable, write_json
from detkit.core.visualize import save_image
from detkit.data.groundtruth import coco_document
from detkit.data.images import read_image
from detkit.data.source import DetectionSource
from detkit.data.voc import voc_xml
from detkit.data.yolo import label_path, yolo_rows, yolo_yaml

logger = logging.getLogger(__name__)

FORMATS = ("coco", "voc", "yolo")
IMAGE_MODES = ("copy", "symlink")


def convert_dataset(
    sources: Mapping[str, DetectionSource], to: str, out: str | Path, images: str = "copy"
) -> dict[str, dict[str, int]]:
    """Write ``sources`` (split -> reader) as format ``to`` into ``out`` through a temporary
    folder renamed into place, images copied or symlinked (``images``); read back, boxes agree
    within 0.5 px (VOC integers) or 1e-6 of the side (YOLO drops crowd/difficult objects).
    Returns split -> counts ``images``, ``boxes``, ``ignored``, ``ignored_dropped``. Raises
    ValueError (unknown format or mode, ``out`` inside a source) or FileExistsError."""
    if to not in FORMATS:
        raise ValueError(f"unknown format {to!r}; choose one of {', '.join(FORMATS)}")
    if images not in IMAGE_MODES:
        raise ValueError(f"images must be one of {', '.join(IMAGE_MODES)}, got {images!r}")
    out = Path(out).absolute()
    if out.exists():
        raise FileExistsError(f"{out} already exists; conversion writes a new folder")
    for source in sources.values():
        for folder in source.protected_dirs():
            root = Path(folder).absolute()
            if out == root or root in out.parents:
                raise ValueError(f"{out} is inside the source dataset {root}; write elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)
        writer = _Writer(tmp, to, images)
        summary = {split: writer.split(split, source) for split, source in sources.items()}
        if to == "yolo":
            names = next(iter(sources.values())).class_names if sources else []
            splits = {split: f"images/{split}" for split in sources}
            (tmp / "data.yaml").write_text(yolo_yaml(splits, names), encoding="utf-8")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


class _Writer:
    """Writes splits one after another into ``root`` in one format."""

    def __init__(self, root: Path, fmt: str, images: str) -> None:
        self.root, self.fmt, self.images = root, fmt, images
        self.used: set[str] = set()  # VOC: one JPEGImages folder for all splits

    def split(self, split: str, source: DetectionSource) -> dict[str, int]:
        names: set[str] = self.used if self.fmt == "voc" else set()
        image_dir = self.root / ("JPEGImages" if self.fmt == "voc" else f"images/{split}")
        image_dir.mkdir(parents=True, exist_ok=True)
        if self.fmt == "voc":
            (self.root / "Annotations").mkdir(exist_ok=True)
        file_names: list[str] = []  # COCO
        ids: list[str] = []  # VOC
        counts = {"images": 0, "boxes": 0, "ignored": 0, "ignored_dropped": 0}
        for i in tqdm(range(len(source)), desc=f"writing {split}", unit="img", disable=None):
            file_name = self._place_image(source, i, image_dir, names)
            h, w = source.image_size(i)
            boxes, labels = source.targets(i)
            hard_boxes, hard_labels = source.ignored(i)
            counts["images"] += 1
            counts["boxes"] += len(boxes)
            if self.fmt == "yolo":
                counts["ignored_dropped"] += len(hard_boxes)
                target = label_path(image_dir / file_name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(yolo_rows(boxes, labels, h, w), encoding="utf-8")
                continue
            counts["ignored"] += len(hard_boxes)
            if self.fmt == "coco":
                file_names.append(file_name)
                continue
            all_boxes = np.concatenate([boxes, hard_boxes]).reshape(-1, 4)
            all_labels = np.concatenate([labels, hard_labels]).astype(np.int64)
            hard = np.arange(len(all_boxes)) >= len(boxes)
            stem = Path(file_name).stem
            ids.append(stem)
            xml = voc_xml(file_name, h, w, all_boxes, all_labels, hard, source.class_names)
            (self.root / "Annotations" / f"{stem}.xml").write_text(xml, encoding="utf-8")
        if self.fmt == "coco":
            doc = coco_document(source, file_names)
            write_json(self.root / "annotations" / f"instances_{split}.json", doc)
        elif self.fmt == "voc":
            listing = self.root / "ImageSets" / "Main" / f"{split}.txt"
            listing.parent.mkdir(parents=True, exist_ok=True)
            listing.write_text("".join(f"{s}\n" for s in ids), encoding="utf-8")
        if dropped := counts["ignored_dropped"]:
            logger.warning(
                "%s: %d crowd/difficult boxes dropped (YOLO cannot mark them)", split, dropped
            )
        return counts

    def _place_image(self, source: DetectionSource, i: int, folder: Path, used: set[str]) -> str:
        """Copy, link or (EXIF-ignored case) re-encode image ``i``; return its new file name."""
        src = source.image_path(i)
        orientation, differs = source.orientation(i)
        suffix = ".png" if differs else src.suffix.lower()
        rel = Path(decodable(source.file_name(i))).with_suffix("")  # UTF-8 for json, xml, txt
        stems = [rel.name.lstrip(".") or "image", rel.as_posix().replace("/", "_").lstrip("._")]
        if self.fmt == "voc":  # an ImageSets line is one id: the reader splits at whitespace
            stems = [re.sub(r"\s+", "_", s) for s in stems]
        name = _unique(stems, suffix, used, source.image_ids[i])
        target = folder / name
        if differs:
            save_image(target, read_image(src, orientation))
        elif self.images == "symlink":
            os.symlink(src.absolute(), target)
        else:
            shutil.copyfile(src, target)
        return name


def _unique(stems: list[str], suffix: str, used: set[str], image_id: int) -> str:
    """The first free stem of ``stems`` (base name, then the flattened relative path), else
    the base name with ``_<image_id>`` (then a counter); plus ``suffix``."""
    for stem in stems:
        if stem and stem not in used:
            used.add(stem)
            return stem + suffix
    candidate, n = f"{stems[0]}_{image_id}", 1
    while candidate in used:
        n += 1
        candidate = f"{stems[0]}_{image_id}_{n}"
    used.add(candidate)
    return candidate + suffix

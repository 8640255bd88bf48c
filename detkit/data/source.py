"""The reader interface shared by COCO, VOC and YOLO: one checked index of images and boxes.

A reader parses its annotation files into :class:`ImageEntry` records (boxes in the file's own
frame) and hands them to :class:`DetectionSource`, which checks every image file once (header and
tail, in threads, with a progress bar on large sets), turns boxes into xyxy orig px of the picture
as the labeller saw it, cleans them, and fills the :class:`~detkit.data.check.DataReport`.
Nothing is checked later: ``load(i)`` only decodes.

Every reader therefore has the same surface: ``class_names``, ``cat_ids`` (label -> category id
in the ground-truth file), ``image_ids``, ``len()``, ``load(i) -> Sample``, ``report`` and
``gt_file`` (the user's own COCO file when evaluation can use it as it is). The evaluation ground
truth is built by free functions over a source in :mod:`detkit.data.groundtruth`
(``ground_truth(split)`` in memory, ``ground_truth_file(split)`` for tools that read files).
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from detkit.data.check import DataReport, clean_boxes
from detkit.data.groundtruth import default_cache_dir
from detkit.data.images import (
    MAX_PIXELS,
    MIN_IMAGE_SIDE,
    ImageProbe,
    orientation_frame,
    probe_image,
    read_image,
)
from detkit.data.scan import cache_file_for, decode_problems
from detkit.data.types import Sample

logger = logging.getLogger(__name__)

PROGRESS_MIN_IMAGES = 1000
"""Opening a split with at least this many images shows a progress bar (on a terminal)."""

_ASPECT_TOLERANCE = 0.01


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float64)


def _no_labels() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass
class ImageEntry:
    """One image as an annotation file describes it, before any check.

    Attributes:
        path: the image file.
        image_id: the id the split's ground truth uses (an integer; readers of formats without
            ids number images ``1..N`` in listing order).
        where: the annotation file (and line or id) to name in messages.
        boxes: ``[N, 4]`` float64 xyxy in the annotation's frame: px of the declared size, or
            fractions of the image size when ``normalized``.
        labels: ``[N]`` int64 contiguous labels.
        ignore_boxes: ``[K, 4]`` like ``boxes``: crowd (COCO) or difficult (VOC) objects, kept
            out of training and marked ``iscrowd`` for evaluation.
        ignore_labels: ``[K]`` int64.
        declared: ``(height, width)`` the annotation file records, or None.
        normalized: boxes are fractions of the image size (YOLO).
        alt_path: a second place to look when ``path`` is missing (COCO base-name fallback).
        areas: ``[N]`` areas to keep in the evaluation ground truth (COCO's mask areas), or None
            for box areas; ``ignore_areas`` likewise for ``ignore_boxes``.
        no_label_file: a YOLO image without a label file (a counted negative).
    """

    path: Path
    image_id: int
    where: str
    boxes: np.ndarray = field(default_factory=_no_boxes)
    labels: np.ndarray = field(default_factory=_no_labels)
    ignore_boxes: np.ndarray = field(default_factory=_no_boxes)
    ignore_labels: np.ndarray = field(default_factory=_no_labels)
    declared: tuple[int, int] | None = None
    normalized: bool = False
    alt_path: Path | None = None
    areas: np.ndarray | None = None
    ignore_areas: np.ndarray | None = None
    no_label_file: bool = False


@dataclass
class _Kept:
    """An admitted image: everything ``load`` and the ground truth need."""

    path: Path
    image_id: int
    orientation: int
    size: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    ignore_boxes: np.ndarray
    ignore_labels: np.ndarray
    areas: np.ndarray | None
    ignore_areas: np.ndarray | None
    file_orientation: int


class DetectionSource:
    """A checked, indexed detection split; readers subclass it (see the module docstring).

    Attributes:
        format: ``"coco"``, ``"voc"`` or ``"yolo"``.
        class_names: names by contiguous label.
        cat_ids: ground-truth category id of each label (``cat_ids[label]``).
        image_ids: image id of each item; ``load(i)`` reads ``image_ids[i]``.
        images_root: folder that the ground truth's ``file_name`` entries are relative to.
        report: what the checks found (:class:`~detkit.data.check.DataReport`).
        gt_file: the user's own COCO file when evaluation can use it unchanged, else None.
        cache_dir: where converted ground truth and decode verdicts are cached.
    """

    format = ""

    def __init__(
        self,
        entries: list[ImageEntry],
        class_names: list[str],
        cat_ids: list[int],
        report: DataReport,
        images_root: Path,
        *,
        max_pixels: int = MAX_PIXELS,
        min_image_side: int = MIN_IMAGE_SIDE,
        cache_dir: str | Path | None = None,
        gt_file: Path | None = None,
        decode_workers: int | None = None,
    ) -> None:
        """Check ``entries`` and index the admitted images.

        Args:
            entries: parsed records, in item order.
            class_names: names by label.
            cat_ids: category id of each label in the ground truth.
            report: the report the reader has been filling; completed here.
            images_root: base of the ground truth's file names.
            max_pixels: images with more pixels (width x height) are refused as bombs.
            min_image_side: images with a shorter side (px) are skipped.
            cache_dir: where ``ground_truth_file`` writes the converted ground truth (None:
                ``$DETKIT_HOME/cache``).
            gt_file: the user's own COCO file, used as the ground truth when the checks changed
                nothing that evaluation sees.
            decode_workers: processes for the full decode of every admitted image
                (:func:`~detkit.data.scan.decode_problems`; None: the CPU count, at most 8).

        Raises:
            DataError: invalid entries were found and ``report.skip_invalid`` is False.
        """
        if len(cat_ids) != len(class_names):
            raise ValueError(f"{len(cat_ids)} category ids for {len(class_names)} class names")
        self.class_names = list(class_names)
        self.cat_ids = [int(c) for c in cat_ids]
        self.cat_id_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        self.report = report
        self.images_root = Path(images_root)
        self.max_pixels, self.min_image_side = max_pixels, min_image_side
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        report.images = len(entries)
        report.raise_if_invalid()  # every invalid kind is found while parsing: fail before probing
        probes = self._probe_all(entries)
        admitted = [self._admit(e, p) for e, p in zip(entries, probes, strict=True)]
        self._items = self._decodable([k for k in admitted if k], decode_workers)
        self.image_ids = [k.image_id for k in self._items]
        report.kept = len(self._items)
        report.negatives = sum(len(k.boxes) == 0 for k in self._items)
        kept_ids = set(self.image_ids)
        report.no_label_file = sum(e.no_label_file for e in entries if e.image_id in kept_ids)
        report.boxes = sum(len(k.boxes) for k in self._items)
        report.ignored = sum(len(k.ignore_boxes) for k in self._items)
        self.gt_file = gt_file if gt_file is not None and not report.changes_gt() else None
        logger.debug("%s", report.table())

    # -- the reader interface -----------------------------------------------------------------
    def __len__(self) -> int:
        """Number of admitted images, negatives included."""
        return len(self._items)

    def load(self, index: int) -> Sample:
        """Decode image ``index`` and return it with its training boxes.

        Args:
            index: ``0 <= index < len(self)``.

        Returns:
            A ``Sample``: RGB uint8 ``[H, W, 3]`` (as the labeller saw it), float32 ``[N, 4]``
            xyxy orig px boxes inside the image, int64 ``[N]`` labels; crowd / difficult
            objects are not among them.

        Raises:
            IndexError: ``index`` out of range.
            ValueError: the file no longer decodes to the size it had when the split was opened.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        item = self._items[index]
        image = read_image(item.path, item.orientation, self.max_pixels)
        if image.shape[:2] != item.size:
            raise ValueError(
                f"{item.path}: decoded {image.shape[1]}x{image.shape[0]}, expected "
                f"{item.size[1]}x{item.size[0]} (file changed since the dataset was opened?)"
            )
        return Sample(
            image=image,
            boxes=item.boxes.copy(),
            labels=item.labels.copy(),
            image_id=item.image_id,
            path=str(item.path),
        )

    def protected_dirs(self) -> list[Path]:
        """Folders holding this dataset's files (nothing may be written inside them)."""
        return [self.images_root]

    def image_path(self, index: int) -> Path:
        """The file of image ``index``."""
        return self._items[index].path

    def image_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index`` as ``load`` returns it (no decoding)."""
        return self._items[index].size

    def targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Training boxes (float32 ``[N, 4]`` xyxy orig px) and labels of ``index`` (copies)."""
        item = self._items[index]
        return item.boxes.copy(), item.labels.copy()

    def ignored(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Crowd / difficult boxes (float32 ``[K, 4]`` xyxy orig px) and labels of ``index``."""
        item = self._items[index]
        return item.ignore_boxes.copy(), item.ignore_labels.copy()

    def file_name(self, index: int) -> str:
        """Path of image ``index`` relative to ``images_root`` (``/``-separated)."""
        path = self._items[index].path
        return Path(os.path.relpath(path, self.images_root)).as_posix()

    def orientation(self, index: int) -> tuple[int, bool]:
        """EXIF orientation applied to ``index``, and whether it differs from the file's tag."""
        item = self._items[index]
        return item.orientation, item.orientation != item.file_orientation

    def areas(self, index: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Areas the ground truth keeps for ``targets(index)`` and ``ignored(index)`` (COCO's
        own, e.g. mask areas), or None where box areas apply."""
        item = self._items[index]
        return item.areas, item.ignore_areas

    # -- checks -------------------------------------------------------------------------------
    def _probe_all(self, entries: list[ImageEntry]) -> list[ImageProbe]:
        paths = [e.path for e in entries]
        bar = tqdm(
            total=len(paths),
            desc=f"checking {self.report.name}",
            unit="img",
            disable=len(paths) < PROGRESS_MIN_IMAGES or None,
        )
        threads = min(8, os.cpu_count() or 1) * 2
        # Pillow warns about large images from every thread; the report counts them instead.
        with bar, warnings.catch_warnings(), ThreadPoolExecutor(max_workers=threads) as pool:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probes = []
            for probe in pool.map(probe_image, paths):
                probes.append(probe)
                bar.update()
        for i, entry in enumerate(entries):
            if probes[i].problem == "image_missing" and entry.alt_path is not None:
                alt = probe_image(entry.alt_path)
                if not alt.problem:
                    self.report.add("image_basename", f"{entry.where}: {entry.alt_path}")
                    entry.path, probes[i] = entry.alt_path, alt
        return probes

    def _decodable(self, items: list[_Kept], workers: int | None) -> list[_Kept]:
        """The items that decode cleanly (each decoded once, cached); the others are counted."""
        cache = cache_file_for(self.cache_dir, self.images_root)
        reasons = decode_problems([k.path for k in items], self.max_pixels, workers, cache)
        for item, reason in zip(items, reasons, strict=True):
            if reason:
                self.report.add("image_corrupt", f"{item.path}: {reason}")
        return [k for k, r in zip(items, reasons, strict=True) if not r]

    def _admit(self, entry: ImageEntry, probe: ImageProbe) -> _Kept | None:
        """Check one image and its boxes; None when the image is skipped (counted)."""
        report, where = self.report, f"{entry.path}"
        if probe.problem:
            report.add(probe.problem, f"{where}: {probe.detail}")
            return None
        if probe.width * probe.height > self.max_pixels:
            pixels = f"{probe.width}x{probe.height}"
            report.add("image_too_large", f"{where}: {pixels} > max_pixels={self.max_pixels}")
            return None
        orientation = orientation_frame(probe, entry.declared)
        if orientation != probe.orientation:
            report.add("image_exif_ignored", where)
        elif orientation != 1:
            report.add("image_exif", f"{where}: orientation {orientation}")
        size = (
            probe.shown_size() if orientation == probe.orientation else (probe.height, probe.width)
        )
        if min(size) < self.min_image_side:
            report.add("image_too_small", f"{where}: {size[1]}x{size[0]} px")
            return None
        boxes, ignore = self._to_pixels(entry, size)
        keep, clean = clean_boxes(boxes, entry.labels, *size, report, entry.where)
        ikeep, iclean = clean_boxes(ignore, entry.ignore_labels, *size, report, entry.where)
        return _Kept(
            path=entry.path,
            image_id=entry.image_id,
            orientation=orientation,
            size=size,
            boxes=clean,
            labels=entry.labels[keep].astype(np.int64),
            ignore_boxes=iclean,
            ignore_labels=entry.ignore_labels[ikeep].astype(np.int64),
            areas=None if entry.areas is None else entry.areas[keep],
            ignore_areas=None if entry.ignore_areas is None else entry.ignore_areas[ikeep],
            file_orientation=probe.orientation,
        )

    def _to_pixels(self, entry: ImageEntry, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Both box sets of ``entry`` in px of the image as loaded (``size`` = (h, w))."""
        h, w = size
        if entry.normalized:
            scale = np.array([w, h, w, h], dtype=np.float64)
            return entry.boxes * scale, entry.ignore_boxes * scale
        if entry.declared is None:
            self.report.add("image_size_missing", entry.where)
            return entry.boxes, entry.ignore_boxes
        dh, dw = entry.declared
        if (dh, dw) == (h, w) or dh <= 0 or dw <= 0:
            return entry.boxes, entry.ignore_boxes
        if abs((dw / dh) / (w / h) - 1.0) < _ASPECT_TOLERANCE:
            self.report.add("image_size_scaled", f"{entry.where}: {dw}x{dh} -> {w}x{h}")
            scale = np.array([w / dw, h / dh, w / dw, h / dh], dtype=np.float64)
            return entry.boxes * scale, entry.ignore_boxes * scale
        self.report.add("image_size_mismatch", f"{entry.where}: {dw}x{dh} vs {w}x{h}")
        return entry.boxes, entry.ignore_boxes

"""The reader interface of COCO, VOC and YOLO: a reader parses its files into an ``EntryTable``,
:class:`DetectionSource` checks it once, as array operations, into a ``SplitIndex`` (boxes xyxy
orig px of the picture as the labeller saw it); ``load(i)`` then only decodes."""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
from PIL import Image
from tqdm import tqdm

from detkit.core.io import default_cache_dir
from detkit.data.check import DataReport, clean_box_rows
from detkit.data.images import (
    _SWAPS_AXES,
    MAX_PIXELS,
    MIN_IMAGE_SIDE,
    ImageProbe,
    probe_image,
    read_image,
)
from detkit.data.index import (
    EntryTable,
    SplitIndex,
    cache_folder,
    file_keys,
    load_index,
    pack_paths,
    save_index,
)
from detkit.data.scan import cache_file_for, catch_decoder_output, decode_problems
from detkit.data.types import Sample

logger = logging.getLogger(__name__)

PROGRESS_MIN_IMAGES = 1000
"""Opening a split with at least this many images shows a progress bar (on a terminal)."""

_ASPECT_TOLERANCE = 0.01


@dataclass
class ImageEntry:
    """One image as an annotation file describes it, before any check (``where``: the file to
    name in messages). ``boxes`` float64 ``[N, 4]`` xyxy px of the ``declared`` ``(height,
    width)``, or fractions of the image size in a normalized table (YOLO); ``crowd`` bool
    ``[N]`` marks crowd or difficult (VOC) objects (None: none)."""

    path: Path
    image_id: int
    where: str
    boxes: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray | None = None
    declared: tuple[int, int] | None = None
    no_label_file: bool = False


def table_from_entries(entries: list[ImageEntry], normalized: bool = False) -> EntryTable:
    """The :class:`EntryTable` of per-image records (VOC and YOLO readers build those)."""
    crowd = [np.zeros(len(e.boxes), bool) if e.crowd is None else e.crowd for e in entries]
    return EntryTable(
        paths=[e.path for e in entries],
        image_ids=np.array([e.image_id for e in entries], dtype=np.int64),
        where=lambda row: entries[row].where,
        declared=np.array([e.declared or (0, 0) for e in entries], np.int64).reshape(-1, 2),
        owner=np.repeat(np.arange(len(entries), dtype=np.int64), [len(e.boxes) for e in entries]),
        boxes=np.concatenate([np.reshape(e.boxes, (-1, 4)) for e in entries] or [np.zeros((0, 4))]),
        labels=np.concatenate([e.labels for e in entries] or [np.zeros(0)]).astype(np.int64),
        crowd=np.concatenate([*crowd, np.zeros(0, bool)]),
        normalized=normalized,
        no_label_file=np.array([e.no_label_file for e in entries], dtype=bool),
    )


class SourceOptions(TypedDict, total=False):
    """What every reader takes besides its files: ``max_pixels``, ``min_image_side``,
    ``cache_dir`` (None: ``$DETKIT_HOME/cache``) and ``decode_workers`` (the scan's decoders)."""

    max_pixels: int
    min_image_side: int
    cache_dir: str | Path | None
    decode_workers: int | None


class DetectionSource:
    """A checked, indexed detection split (flat arrays, memory-mapped when cached); a reader
    subclasses it and opens it from the cache (:meth:`_open_cached`) or checks its table.
    ``format``: coco, voc or yolo; ``cat_ids``: category id of each label; ``images_root``: what
    ``file_name`` entries are relative to; ``gt_file``: the user's COCO file when evaluation can
    use it unchanged, else None; ``cached``: opened from the cache (nothing parsed or decoded)."""

    format = ""

    def __init__(
        self, report: DataReport, images_root: Path, **options: Unpack[SourceOptions]
    ) -> None:
        self.report = report
        self.images_root = Path(images_root)
        self.max_pixels = options.get("max_pixels", MAX_PIXELS)
        self.min_image_side = options.get("min_image_side", MIN_IMAGE_SIDE)
        self.cache_dir = Path(options.get("cache_dir") or default_cache_dir())
        self.decode_workers = options.get("decode_workers")
        self._image_ids: list[int] | None = None

    def _check_table(
        self,
        table: EntryTable,
        class_names: list[str],
        cat_ids: list[int],
        gt_file: Path | None = None,
        cache_key: tuple[str, str] | None = None,
    ) -> None:
        """Check ``table`` (in item order) and index the admitted images, completing the report
        (DataError for invalid entries unless ``skip_invalid``); cached under a ``cache_key``."""
        self._set_classes(class_names, cat_ids)
        report = self.report
        report.images = len(table)
        report.raise_if_invalid()  # every invalid kind is found while parsing: fail before probing
        index = self._check(table)
        self.gt_file = gt_file if gt_file is not None and not report.changes_gt() else None
        if cache_key is not None:
            index = self._save(cache_key, index)
        self._index, self.cached = index, False
        logger.debug("%s", report.table())

    def _set_classes(self, class_names: list[str], cat_ids: list[int]) -> None:
        if len(cat_ids) != len(class_names):
            raise ValueError(f"{len(cat_ids)} category ids for {len(class_names)} class names")
        self.class_names = list(class_names)
        self.cat_ids = [int(c) for c in cat_ids]
        self.cat_id_to_label = {c: i for i, c in enumerate(self.cat_ids)}

    def _open_cached(self, key: tuple[str, str], gt_file: Path | None = None) -> bool:
        """Open from the cache when ``key`` has a valid one; False when the reader must check.
        The report keeps its name and policy; its counts come from the cache."""
        if (hit := load_index(self.cache_dir, key)) is None:
            return False
        index, meta = hit
        cached = DataReport.from_dict(meta["report"])
        cached.name, cached.skip_invalid = self.report.name, self.report.skip_invalid
        self.report = cached
        self._set_classes(meta["class_names"], meta["cat_ids"])
        self.gt_file = gt_file if gt_file is not None and meta["gt_unchanged"] else None
        self._index, self.cached = index, True
        logger.debug("opened %s from its cache %s", cached.name, cache_folder(self.cache_dir, key))
        return True

    def _save(self, key: tuple[str, str], index: SplitIndex) -> SplitIndex:
        """Cache the checked split and use the memory-mapped copy (as the next open will);
        a cache that cannot be written costs only the next open its checks."""
        meta = {"report": self.report.to_dict(), "class_names": self.class_names,
                "cat_ids": self.cat_ids, "gt_unchanged": not self.report.changes_gt()}  # fmt: skip
        try:
            save_index(self.cache_dir, key, index, meta)
        except OSError as e:
            logger.warning("could not cache the checked split in %s (%s): the next open checks "
                           "it again", self.cache_dir, e)  # fmt: skip
            return index
        reopened = load_index(self.cache_dir, key, verify_files=False)
        return reopened[0] if reopened is not None else index

    def keep_first(self, count: int) -> None:
        """Serve only the first ``count`` images (``data.fraction``); the report still counts
        the whole split and its name says so."""
        total = len(self)
        if count >= total:
            return
        self._index, self._image_ids = self._index.head(count), None
        self.gt_file = None  # the user's file holds the others too
        self.report.name += f" (fraction: the first {count} of these {total} images are used)"

    # -- the reader interface -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    @property
    def image_ids(self) -> list[int]:
        if self._image_ids is None:
            self._image_ids = self._index.image_ids.tolist()
        return self._image_ids

    def load(self, index: int) -> Sample:
        """A ``Sample``: the image as the labeller saw it and its training boxes (no crowd or
        difficult ones). IndexError out of range; ValueError when the file changed since the
        check (size, mtime, inode or ctime), its decoder warned or it decodes to another size."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        ix = self._index
        path, size = ix.path(index), self.image_size(index)
        if (file_keys([path])[0] != ix.file_keys[index]).any():  # its verdict no longer holds
            raise ValueError(f"{path}: changed since the split was checked (size, time or inode); "
                             "open the split again to check it")  # fmt: skip
        with catch_decoder_output() as warned:  # in loader workers: counted as at the scan
            image = read_image(path, int(ix.orientation[index, 0]), self.max_pixels)
        if warned:
            raise ValueError(f"{path}: damaged since the split was checked (decoder warning: "
                             f"{warned[0].splitlines()[0][:200]})")  # fmt: skip
        if image.shape[:2] != size:
            raise ValueError(
                f"{path}: decoded {image.shape[1]}x{image.shape[0]}, expected "
                f"{size[1]}x{size[0]} (file changed since the dataset was opened?)"
            )
        return Sample(image, *self.targets(index), int(ix.image_ids[index]), str(path))

    def protected_dirs(self) -> list[Path]:
        """Folders holding this dataset's files (nothing may be written inside them)."""
        return [self.images_root]

    def image_path(self, index: int) -> Path:
        return self._index.path(index)

    def image_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index`` as ``load`` returns it (no decoding)."""
        return tuple(self._index.sizes[index].tolist())

    def image_sizes(self) -> np.ndarray:
        """int32 ``[N, 2]`` ``(height, width)`` of every image as ``load`` returns it."""
        return self._index.sizes

    def targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Training boxes (float32 ``[N, 4]`` xyxy orig px) and labels of ``index`` (copies)."""
        boxes, labels, _ = self._index.boxes_of(index)
        return np.array(boxes, dtype=np.float32), np.array(labels, dtype=np.int64)

    def ignored(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Crowd / difficult boxes (float32 ``[K, 4]`` xyxy orig px) and labels of ``index``."""
        boxes, labels, _ = self._index.ignored_of(index)
        return np.array(boxes, dtype=np.float32), np.array(labels, dtype=np.int64)

    def all_targets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read-only float32 ``[M, 4]`` xyxy orig px, int64 labels ``[M]`` and int64 ``[N]`` end
        offsets (image ``i`` holds ``ends[i-1]:ends[i]``) of every image's training boxes."""
        return self._index.boxes, self._index.labels, self._index.box_ends

    def file_name(self, index: int) -> str:
        """Path of image ``index`` relative to ``images_root`` (``/``-separated)."""
        return Path(os.path.relpath(self._index.path(index), self.images_root)).as_posix()

    def orientation(self, index: int) -> tuple[int, bool]:
        """EXIF orientation applied to ``index``, and whether it differs from the file's tag."""
        applied, tag = self._index.orientation[index].tolist()
        return applied, applied != tag

    def areas(self, index: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Areas the ground truth keeps for ``targets(index)`` and ``ignored(index)`` (COCO's
        own, e.g. mask areas), or None where box areas apply."""
        pair = self._index.boxes_of(index)[2], self._index.ignored_of(index)[2]
        areas, ignore = (np.array(a, np.float64) for a in pair)
        return tuple(None if np.isnan(a).any() else a for a in (areas, ignore))

    # -- checks -------------------------------------------------------------------------------
    def _check(self, table: EntryTable) -> SplitIndex:
        """Probe, admit, convert, clean and decode every row once, counting in the report."""
        report, n = self.report, len(table)
        probes = self._probe_all(table)
        keys = file_keys(table.paths)
        columns = [(p.width, p.height, p.orientation) for p in probes]
        width, height, tag = np.array(columns, dtype=np.int64).reshape(-1, 3).T
        ok = np.ones(n, dtype=bool)
        for i, probe in enumerate(probes):
            if probe.problem:
                report.add(probe.problem, f"{table.paths[i]}: {probe.detail}")
                ok[i] = False
        where_path = lambda row: str(table.paths[row])  # noqa: E731
        large = ok & (width * height > self.max_pixels)
        report.add_rows("image_too_large", np.flatnonzero(large), lambda r: (
            f"{table.paths[r]}: {width[r]}x{height[r]} > max_pixels={self.max_pixels}"))  # fmt: skip
        ok &= ~large
        orientation, size = _frames(tag, height, width, table.declared)
        report.add_rows("image_exif_ignored", np.flatnonzero(ok & (orientation != tag)), where_path)
        exif = ok & (orientation == tag) & (orientation != 1)
        report.add_rows("image_exif", np.flatnonzero(exif),
                        lambda r: f"{table.paths[r]}: orientation {orientation[r]}")  # fmt: skip
        small = ok & (size.min(axis=1) < self.min_image_side)
        report.add_rows("image_too_small", np.flatnonzero(small),
                        lambda r: f"{table.paths[r]}: {size[r, 1]}x{size[r, 0]} px")  # fmt: skip
        ok &= ~small
        sel = np.flatnonzero(ok[table.owner])
        owner = table.owner[sel]
        boxes = self._to_pixels(table, ok, size)[sel]
        keep, clean = clean_box_rows(boxes, table.labels[sel], owner, size, report, table.where,
                                     group=table.crowd[sel])  # fmt: skip
        rows = np.flatnonzero(ok)
        cache = cache_file_for(self.cache_dir, self.images_root)
        reasons = decode_problems([table.paths[r] for r in rows.tolist()], self.max_pixels,
                                  self.decode_workers, cache)  # fmt: skip
        for row, reason in zip(rows.tolist(), reasons, strict=True):
            if reason:
                report.add("image_corrupt", f"{table.paths[row]}: {reason}")
                ok[row] = False
        box_ok = ok[owner[keep]]
        keep, clean = keep[box_ok], clean[box_ok]
        turned = np.stack([orientation, tag], axis=1)
        return self._index_of(table, ok, sel[keep], clean, size, turned, keys)

    def _index_of(
        self, table: EntryTable, ok: np.ndarray, keep_rows: np.ndarray, boxes: np.ndarray,
        size: np.ndarray, orientation: np.ndarray, keys: np.ndarray,
    ) -> SplitIndex:  # fmt: skip
        """The index of rows ``ok`` and the cleaned ``boxes`` of ``keep_rows`` (ascending)."""
        report = self.report
        rows = np.flatnonzero(ok)
        owner = (np.cumsum(ok) - 1)[table.owner[keep_rows]]
        crowd = table.crowd[keep_rows]
        labels = table.labels[keep_rows].astype(np.int64)
        areas = (table.areas[keep_rows].astype(np.float64) if table.areas is not None
                 else np.full(len(keep_rows), np.nan))  # fmt: skip
        train, ign = ~crowd, crowd
        counts = np.bincount(owner[train], minlength=len(rows))
        paths, ends = pack_paths([table.paths[r] for r in rows.tolist()])
        listed, listed_ends = pack_paths(table.paths)
        report.kept = len(rows)
        report.negatives = int((counts == 0).sum())
        if table.no_label_file is not None:
            report.no_label_file = int(table.no_label_file[rows].sum())
        report.boxes, report.ignored = int(train.sum()), int(ign.sum())
        return SplitIndex(
            path_bytes=paths, path_ends=ends,
            image_ids=table.image_ids[rows].astype(np.int64),
            sizes=size[rows].astype(np.int32),
            orientation=orientation[rows].astype(np.int8),
            file_keys=keys[rows],
            box_ends=np.cumsum(counts).astype(np.int64),
            boxes=boxes[train].reshape(-1, 4).astype(np.float32),
            labels=labels[train], areas=areas[train],
            ignore_ends=np.cumsum(np.bincount(owner[ign], minlength=len(rows))).astype(np.int64),
            ignore_boxes=boxes[ign].reshape(-1, 4).astype(np.float32),
            ignore_labels=labels[ign], ignore_areas=areas[ign],
            listed_bytes=listed, listed_ends=listed_ends, listed_keys=keys,
        )  # fmt: skip

    def _probe_all(self, table: EntryTable) -> list[ImageProbe]:
        """Probe every file (threads); a missing one takes its usable ``alt_paths`` entry
        (``table.paths`` is updated)."""
        paths = table.paths
        threads = min(8, os.cpu_count() or 1) * 2
        # Pillow warns about large images from every thread; the report counts them instead.
        with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=threads) as pool:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probes = list(tqdm(pool.map(probe_image, paths), total=len(paths), unit="img",
                               desc=f"checking {self.report.name}",
                               disable=len(paths) < PROGRESS_MIN_IMAGES or None))  # fmt: skip
        for i, alt in enumerate(table.alt_paths or []):
            if probes[i].problem == "image_missing" and alt is not None:
                found = probe_image(alt)
                if not found.problem:
                    self.report.add("image_basename", f"{table.where(i)}: {alt}")
                    paths[i], probes[i] = alt, found
        return probes

    def _to_pixels(self, table: EntryTable, ok: np.ndarray, size: np.ndarray) -> np.ndarray:
        """``table``'s boxes in px of each image as loaded (``size`` ``[N, 2]`` = (h, w)),
        counting declared sizes that are missing, scaled or of another aspect."""
        h, w = size[:, 0].astype(np.float64), size[:, 1].astype(np.float64)
        if table.normalized:  # fractions of the image size
            return table.boxes * np.stack([w, h, w, h], axis=1)[table.owner]
        dh, dw = table.declared[:, 0].astype(np.float64), table.declared[:, 1].astype(np.float64)
        known = (dh > 0) & (dw > 0)
        self.report.add_rows("image_size_missing", np.flatnonzero(ok & ~known), table.where)
        differs = ok & known & ((dh != h) | (dw != w))
        with np.errstate(divide="ignore", invalid="ignore"):
            same_aspect = np.abs((dw / dh) / (w / h) - 1.0) < _ASPECT_TOLERANCE
            scaled, mismatch = differs & same_aspect, differs & ~same_aspect
            sx, sy = np.where(scaled, w / dw, 1.0), np.where(scaled, h / dh, 1.0)
        decl = table.declared
        self.report.add_rows("image_size_scaled", np.flatnonzero(scaled), lambda r: (
            f"{table.where(r)}: {decl[r, 1]}x{decl[r, 0]} -> {size[r, 1]}x{size[r, 0]}"))  # fmt: skip
        self.report.add_rows("image_size_mismatch", np.flatnonzero(mismatch), lambda r: (
            f"{table.where(r)}: {decl[r, 1]}x{decl[r, 0]} vs {size[r, 1]}x{size[r, 0]}"))  # fmt: skip
        return table.boxes * np.stack([sx, sy, sx, sy], axis=1)[table.owner]


def _frames(
    tag: np.ndarray, height: np.ndarray, width: np.ndarray, declared: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the EXIF tag to apply and the ``(height, width)`` then: the file's tag, or 1 when
    the declared size is the stored, unrotated one of a 90-degree tag (the tool ignored it)."""
    swaps = np.isin(tag, _SWAPS_AXES)
    stored = (declared[:, 0] == height) & (declared[:, 1] == width) & (declared > 0).all(axis=1)
    ignored = swaps & stored & (height != width)
    orientation = np.where(ignored, 1, tag)
    turned = swaps & ~ignored
    size = np.stack([np.where(turned, width, height), np.where(turned, height, width)], axis=1)
    return orientation, size

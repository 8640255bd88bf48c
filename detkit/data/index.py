"""A split as arrays: what readers parse (:class:`EntryTable`), what a checked split serves
(:class:`SplitIndex`), and the on-disk cache that lets a split open without parsing again.

A reader's per-image records become a handful of flat arrays (boxes of every image in one
``[M, 4]`` array, each image's slice given by an end offset), so that:

- checking a COCO-sized split is array operations, not a Python loop per annotation;
- a loader worker forked from the process that opened the split shares the arrays: nothing
  in them is a Python object whose reference count a read would write, so no page is copied
  (a list of per-image records costs each worker its own copy: ~140 MiB at 100k images);
- the checked split is saved once in ``cache_dir/splits/`` as ``.npy`` files plus a JSON
  record, keyed by the annotation file's content and every setting that decides what the
  checks keep (:func:`split_key`), and opened again memory-mapped: a 100k-image COCO split in
  about a second instead of a minute (BENCHMARKS.md).

A cached split is used only while every image file it lists has the ``(size, mtime_ns, inode,
ctime_ns)`` it had when it was checked (:func:`file_keys`): a file replaced or edited in place
changes its ctime, and the split is checked again (the per-file decode verdicts of
:mod:`detkit.data.scan` still spare the unchanged images their decode). The arrays and the
record carry a SHA-1 digest, so a torn or hand-edited cache is ignored, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from detkit.core.protocols import DetectionSplit

logger = logging.getLogger(__name__)

SCHEMA = 1
"""Version of the cached layout and of the checks that fill it; a change invalidates caches."""

MISSING = -1
"""A :func:`file_keys` row of a file that could not be stat'ed."""


@dataclass
class EntryTable:
    """Every image a reader's annotation files list, before any check, as columns.

    Boxes are in the file's frame (px of the declared size, or fractions of the image when
    ``normalized``), xyxy, grouped by image row (``owner`` ascending).

    Attributes:
        paths: ``N`` image files. alt_paths: a second place to look per row (COCO's base-name
            fallback), or None.
        image_ids: int64 ``[N]``.
        where: row -> the annotation file (and id or line) to name in messages.
        declared: int64 ``[N, 2]`` ``(height, width)`` the annotation records, 0 when unknown.
        owner: int64 ``[M]`` image row of each box. boxes: float64 ``[M, 4]``. labels: int64
            ``[M]``. crowd: bool ``[M]``, crowd (COCO) or difficult (VOC) objects: kept out of
            training, ignored by evaluation.
        areas: float64 ``[M]`` areas the ground truth keeps (COCO's own), or None for box areas.
        normalized: boxes are fractions of the image size (YOLO).
        no_label_file: bool ``[N]``, a YOLO image without a label file (a counted negative).
    """

    paths: list[Path]
    image_ids: np.ndarray
    where: Callable[[int], str]
    declared: np.ndarray
    owner: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray
    areas: np.ndarray | None = None
    normalized: bool = False
    alt_paths: list[Path | None] | None = None
    no_label_file: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class SplitIndex:
    """A checked split: the admitted images and their cleaned boxes, as arrays.

    Image ``i``'s training boxes are ``boxes[box_ends[i - 1]:box_ends[i]]`` (``0`` for the
    first), its crowd / difficult boxes likewise in ``ignore_*``. Boxes are float32 xyxy orig px
    of the image as ``load`` returns it.

    Attributes:
        path_bytes: uint8, every admitted image's absolute path (``os.fsencode``) concatenated;
            ``path_ends`` int64 ``[N]`` their end offsets.
        image_ids: int64 ``[N]``. sizes: int32 ``[N, 2]`` ``(height, width)`` as loaded.
        orientation: int8 ``[N, 2]``: the EXIF orientation applied, and the file's own tag.
        file_keys: int64 ``[N, 4]`` of the admitted files when they were checked.
        box_ends, boxes, labels, areas: training boxes (``areas`` float64, NaN when the box
            area applies). ignore_ends, ignore_boxes, ignore_labels, ignore_areas: likewise.
        listed_bytes, listed_ends, listed_keys: every file the annotation files list (admitted
            or not) and its :func:`file_keys` row: the cache holds while none of them changes.
    """

    path_bytes: np.ndarray
    path_ends: np.ndarray
    image_ids: np.ndarray
    sizes: np.ndarray
    orientation: np.ndarray
    file_keys: np.ndarray
    box_ends: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    ignore_ends: np.ndarray
    ignore_boxes: np.ndarray
    ignore_labels: np.ndarray
    ignore_areas: np.ndarray
    listed_bytes: np.ndarray
    listed_ends: np.ndarray
    listed_keys: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    def path(self, i: int) -> Path:
        """The file of image ``i``."""
        return Path(os.fsdecode(_blob_item(self.path_bytes, self.path_ends, i)))

    def boxes_of(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of image ``i``'s training ``(boxes [n, 4], labels [n], areas [n])``."""
        a, b = _span(self.box_ends, i)
        return self.boxes[a:b], self.labels[a:b], self.areas[a:b]

    def ignored_of(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of image ``i``'s crowd / difficult ``(boxes [k, 4], labels [k], areas [k])``."""
        a, b = _span(self.ignore_ends, i)
        return self.ignore_boxes[a:b], self.ignore_labels[a:b], self.ignore_areas[a:b]

    def head(self, n: int) -> SplitIndex:
        """The first ``n`` images (``data.fraction``); every file listed stays listed, so the
        cache check is unchanged."""
        cut = {"path_bytes": self.path_ends, "boxes": self.box_ends, "labels": self.box_ends,
               "areas": self.box_ends, "ignore_boxes": self.ignore_ends,
               "ignore_labels": self.ignore_ends, "ignore_areas": self.ignore_ends}  # fmt: skip
        per_image = ("path_ends", "image_ids", "sizes", "orientation", "file_keys", "box_ends",
                     "ignore_ends")  # fmt: skip
        parts = {k: getattr(self, k)[: int(ends[n - 1]) if n > 0 else 0] for k, ends in cut.items()}
        parts |= {k: getattr(self, k)[:n] for k in per_image}
        listed = ("listed_bytes", "listed_ends", "listed_keys")
        return SplitIndex(**parts, **{k: getattr(self, k) for k in listed})

    def listed_paths(self) -> list[bytes]:
        """Every listed file (``os.fsencode`` form), in listing order."""
        data, ends = self.listed_bytes.tobytes(), self.listed_ends.tolist()
        return [data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _span(ends: np.ndarray, i: int) -> tuple[int, int]:
    return (int(ends[i - 1]) if i > 0 else 0), int(ends[i])


def _blob_item(blob: np.ndarray, ends: np.ndarray, i: int) -> bytes:
    a, b = _span(ends, i)
    return blob[a:b].tobytes()


def pack_paths(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 blob, int64 end offsets)`` of absolute paths in ``os.fsencode`` form."""
    encoded = [os.fsencode(os.path.abspath(p)) for p in paths]
    ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ends


def file_keys(paths: Sequence[str | bytes | os.PathLike]) -> np.ndarray:
    """int64 ``[N, 4]``: ``(size, mtime_ns, inode, ctime_ns)`` of each file, :data:`MISSING`
    for a file that cannot be stat'ed. An edit in place that keeps size and mtime still moves
    ctime, which no user call can set back."""
    out = np.full((len(paths), 4), MISSING, dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            continue
        out[i] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    return out


def split_key(
    identity: dict[str, Any], content: bytes, settings: dict[str, Any]
) -> tuple[str, str]:
    """``(identity hash, content hash)`` of a split: where it comes from (format, annotation
    path, images folder, reader options) and what decides its checked form (the annotation
    bytes, the check ``settings``, :data:`SCHEMA` and the decoder versions). A new content
    of the same identity replaces the old one's cache."""
    who = json.dumps(identity, sort_keys=True, default=str).encode()
    what = hashlib.sha1(content)
    what.update(json.dumps([SCHEMA, decoder_versions(), settings], sort_keys=True).encode())
    what.update(who)
    return hashlib.sha1(who).hexdigest()[:16], what.hexdigest()[:16]


def decoder_versions() -> dict[str, str]:
    """Versions of everything whose verdict a cached check records: detkit, OpenCV, Pillow."""
    import cv2
    import PIL

    from detkit import __version__

    return {"detkit": __version__, "opencv": cv2.__version__, "pillow": PIL.__version__}


def split_targets(source: DetectionSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every image's training boxes at once: ``(boxes float32 [M, 4] xyxy orig px, labels
    int64 [M], ends int64 [N], sizes int64 [N, 2] (height, width))``, image ``i`` holding
    ``ends[i - 1]:ends[i]``. A detkit reader gives its arrays (no loop); any other source
    with ``len()``, ``targets(i)`` and ``image_size(i)`` is read image by image."""
    if hasattr(source, "all_targets") and hasattr(source, "image_sizes"):
        boxes, labels, ends = source.all_targets()
        return boxes, labels, ends, np.asarray(source.image_sizes(), dtype=np.int64)
    rows = [source.targets(i) for i in range(len(source))]
    boxes = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b, _ in rows] or
                           [np.zeros((0, 4), np.float32)])  # fmt: skip
    labels = np.concatenate([np.asarray(lab, np.int64).reshape(-1) for _, lab in rows] or
                            [np.zeros(0, np.int64)])  # fmt: skip
    ends = np.cumsum([len(lab) for _, lab in rows], dtype=np.int64)
    sizes = np.array([source.image_size(i) for i in range(len(source))], np.int64).reshape(-1, 2)
    return boxes, labels, ends, sizes


# -- the on-disk cache ------------------------------------------------------------------------
def cache_folder(cache_dir: Path, key: tuple[str, str]) -> Path:
    """``cache_dir/splits/<identity>-<content>``."""
    return Path(cache_dir) / "splits" / f"{key[0]}-{key[1]}"


def save_index(cache_dir: Path, key: tuple[str, str], index: SplitIndex, meta: dict) -> Path:
    """Write ``index`` and ``meta`` (plain JSON data) as a cache folder, atomically (a folder
    written beside it, then renamed); the folders of older contents of the same split are
    removed. Returns the folder.

    Raises:
        OSError: the cache folder cannot be written (the caller goes on without a cache).
    """
    final = cache_folder(cache_dir, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        digest = hashlib.sha1()
        for f in fields(SplitIndex):
            array = np.ascontiguousarray(getattr(index, f.name))
            np.save(tmp / f"{f.name}.npy", array, allow_pickle=False)
            digest.update((tmp / f"{f.name}.npy").read_bytes())
        text = json.dumps(meta, sort_keys=True)
        digest.update(text.encode())
        (tmp / "meta.json").write_text(json.dumps({"meta": meta, "sha1": digest.hexdigest()}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in final.parent.glob(f"{key[0]}-*"):  # stale contents of the same split
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_index(
    cache_dir: Path, key: tuple[str, str], verify_files: bool = True
) -> tuple[SplitIndex, dict] | None:
    """The cached index and meta of ``key``, memory-mapped, or None when there is none, it is
    damaged or edited (digest), or (``verify_files``) a file it lists changed since it was
    checked."""
    folder = cache_folder(cache_dir, key)
    if not (folder / "meta.json").is_file():
        return None
    try:
        record = json.loads((folder / "meta.json").read_text())
        digest = hashlib.sha1()
        arrays = {}
        for f in fields(SplitIndex):
            path = folder / f"{f.name}.npy"
            with open(path, "rb") as fh:
                digest.update(fh.read())
            arrays[f.name] = np.load(path, mmap_mode="r", allow_pickle=False)
        digest.update(json.dumps(record["meta"], sort_keys=True).encode())
        if digest.hexdigest() != record["sha1"]:
            logger.warning("ignoring the split cache %s: its content does not match its digest",
                           folder)  # fmt: skip
            return None
        index = SplitIndex(**arrays)
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("ignoring the unreadable split cache %s (%s)", folder, e)
        return None
    if not verify_files:
        return index, record["meta"]
    changed = np.flatnonzero((file_keys(index.listed_paths()) != index.listed_keys).any(axis=1))
    if len(changed):
        first = os.fsdecode(index.listed_paths()[int(changed[0])])
        logger.info("%d image file(s) changed since the split was checked (first: %s): "
                    "checking it again", len(changed), first)  # fmt: skip
        return None
    return index, record["meta"]

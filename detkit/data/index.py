"""A split as flat arrays: what readers parse (:class:`EntryTable`), what a checked split serves
(:class:`SplitIndex`: no Python object per image, so forked workers copy no page), and its
memory-mapped cache in ``cache_dir/splits/`` (valid while every listed file keeps its key)."""

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
    """Every listed image before any check, as columns per row ``[N]`` or per box ``[M]``: boxes
    float64 ``[M, 4]`` xyxy in the file's frame, grouped by ``owner`` (image row, ascending);
    ``declared`` int64 ``[N, 2]`` (h, w), 0 when unknown; ``crowd`` marks crowd or difficult."""

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
    """A checked split. Image ``i``'s training boxes (float32 xyxy orig px as ``load`` returns
    it) are ``boxes[box_ends[i - 1]:box_ends[i]]``, its crowd / difficult ones likewise in
    ``ignore_*``; ``areas`` float64, NaN where the box area applies. Paths are ``os.fsencode``
    bytes concatenated with int64 ends; ``sizes`` int32 ``[N, 2]`` (h, w) as loaded,
    ``orientation`` int8 ``[N, 2]`` (applied, file's tag), ``file_keys`` int64 ``[N, 4]`` at the
    check; ``listed_*``: every listed file, admitted or not."""

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
        a, b = _span(self.path_ends, i)
        return Path(os.fsdecode(self.path_bytes[a:b].tobytes()))

    def boxes_of(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of image ``i``'s training ``(boxes [n, 4], labels [n], areas [n])``."""
        a, b = _span(self.box_ends, i)
        return self.boxes[a:b], self.labels[a:b], self.areas[a:b]

    def ignored_of(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of image ``i``'s crowd / difficult ``(boxes [k, 4], labels [k], areas [k])``."""
        a, b = _span(self.ignore_ends, i)
        return self.ignore_boxes[a:b], self.ignore_labels[a:b], self.ignore_areas[a:b]

    def head(self, n: int) -> SplitIndex:
        """The first ``n`` images; every listed file stays listed (the cache check holds)."""
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


def pack_paths(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 blob, int64 end offsets)`` of absolute paths in ``os.fsencode`` form."""
    encoded = [os.fsencode(os.path.abspath(p)) for p in paths]
    ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ends


def file_keys(paths: Sequence[str | bytes | os.PathLike]) -> np.ndarray:
    """int64 ``[N, 4]`` ``(size, mtime_ns, inode, ctime_ns)`` per file (:data:`MISSING` when not
    stat'able); ctime catches an edit in place that keeps size and mtime."""
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
    """``(identity hash, content hash)``: where a split comes from, and what decides its checked
    form (annotation bytes, ``settings``, :data:`SCHEMA`, decoder versions)."""
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
    """``(boxes float32 [M, 4] xyxy orig px, labels int64 [M], ends int64 [N], sizes int64
    [N, 2] (h, w))`` of every image of a :class:`~detkit.data.source.DetectionSource`."""
    boxes, labels, ends = source.all_targets()
    return boxes, labels, ends, np.asarray(source.image_sizes(), dtype=np.int64)


# -- the on-disk cache ------------------------------------------------------------------------
def cache_folder(cache_dir: Path, key: tuple[str, str]) -> Path:
    """``cache_dir/splits/<identity>-<content>``."""
    return Path(cache_dir) / "splits" / f"{key[0]}-{key[1]}"


def save_index(cache_dir: Path, key: tuple[str, str], index: SplitIndex, meta: dict) -> Path:
    """Write ``index`` and JSON ``meta`` as a cache folder atomically, removing older contents'
    folders of the same split; returns it. OSError when it cannot be written."""
    final = cache_folder(cache_dir, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        for f in fields(SplitIndex):
            array = np.ascontiguousarray(getattr(index, f.name))
            np.save(tmp / f"{f.name}.npy", array, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps({"meta": meta, "sha1": _digest(tmp, meta)}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in final.parent.glob(f"{key[0]}-*"):  # stale contents of the same split
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


def _digest(folder: Path, meta: dict) -> str:
    """SHA-1 over a cache folder's arrays and its meta."""
    digest = hashlib.sha1()
    for f in fields(SplitIndex):
        digest.update((folder / f"{f.name}.npy").read_bytes())
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()


def load_index(
    cache_dir: Path, key: tuple[str, str], verify_files: bool = True
) -> tuple[SplitIndex, dict] | None:
    """The memory-mapped index and meta of ``key``; None when missing, damaged or edited, or
    (``verify_files``) a listed file changed."""
    folder = cache_folder(cache_dir, key)
    if not (folder / "meta.json").is_file():
        return None
    try:
        record = json.loads((folder / "meta.json").read_text())
        if _digest(folder, record["meta"]) != record["sha1"]:
            logger.warning("ignoring the split cache %s: its content does not match its digest",
                           folder)  # fmt: skip
            return None
        arrays = {}
        for f in fields(SplitIndex):
            arrays[f.name] = np.load(folder / f"{f.name}.npy", mmap_mode="r", allow_pickle=False)
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

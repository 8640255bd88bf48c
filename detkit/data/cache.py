"""An optional RAM cache of ``letterbox_resize`` output (so items are pixel-identical), filled
once when training starts and shared copy-on-write by forked workers; nothing goes to disk."""

from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from detkit.data.transforms import letterbox_info, letterbox_resize
from detkit.data.types import Sample

if TYPE_CHECKING:
    from detkit.core.protocols import DetectionSplit

logger = logging.getLogger(__name__)

MAX_MEMORY_FRACTION = 0.7
"""The cache refuses to fill when its estimated size exceeds this share of available memory."""


class ImageCache:
    """Letterbox-resized samples of a source (longest side ``img_size``), ``nbytes`` in memory."""

    def __init__(
        self,
        source: DetectionSplit,
        img_size: int,
        threads: int = 4,
        progress: bool = True,
        copies: int | None = None,
    ) -> None:
        """Decode and resize every image of ``source`` in threads; ValueError first when
        ``copies`` caches (DDP ranks on this machine; None: ``LOCAL_WORLD_SIZE``) would not fit
        in the memory available now (checked before decoding when ``source`` has sizes)."""
        self.img_size = img_size
        copies = copies if copies is not None else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self._check_memory(source, img_size, max(1, copies))
        n = len(source)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            items = pool.map(lambda i: self._resized(source.load(i)), range(n))
            bar = tqdm(
                items, total=n, desc="caching images", unit="img", disable=not progress or None
            )
            self._items = list(bar)
        self.nbytes = sum(s.image.nbytes for s, _ in self._items)
        logger.info("cached %d images at %d px in RAM (%.1f MB)", n, img_size, self.nbytes / 1e6)

    def __len__(self) -> int:
        return len(self._items)

    def load(self, index: int) -> tuple[Sample, tuple[int, int]]:
        """A copy of the cached ``Sample`` (uint8 ``[h, w, 3]``, ``max(h, w) = S``; boxes float32
        xyxy in that resized frame) and the original ``(height, width)``."""
        sample, orig = self._items[index]
        copies = {k: getattr(sample, k).copy() for k in ("image", "boxes", "labels")}
        return dataclasses.replace(sample, **copies), orig

    def _resized(self, sample: Sample) -> tuple[Sample, tuple[int, int]]:
        h, w = sample.image.shape[:2]
        info = letterbox_info(h, w, self.img_size)
        image = letterbox_resize(sample.image, self.img_size)
        boxes = info.to_input(np.asarray(sample.boxes, dtype=np.float32).reshape(-1, 4))
        return dataclasses.replace(sample, image=image, boxes=boxes.astype(np.float32)), (h, w)

    @staticmethod
    def _check_memory(source: DetectionSplit, img_size: int, copies: int = 1) -> None:
        """Refuse up front when ``copies`` caches of the resized images cannot fit in memory."""
        n, size = len(source), getattr(source, "image_size", None)
        needed = n * img_size * img_size * 3
        if size is not None:  # the resized sides, as letterbox_resize rounds them
            infos = [letterbox_info(*size(i), img_size) for i in range(n)]
            needed = 3 * sum(
                round(i.orig_h * i.scale_y) * round(i.orig_w * i.scale_x) for i in infos
            )
        available = _available_memory()
        if available is not None and needed * copies > MAX_MEMORY_FRACTION * available:
            each = f" in each of {copies} processes" if copies > 1 else ""
            raise ValueError(
                f"cache_images needs {needed / 1e9:.1f} GB{each} but {available / 1e9:.1f} GB "
                "are available; set cache_images=false or lower img_size"
            )


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None

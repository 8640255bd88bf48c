"""The torch dataset: a source's samples, transformed, as tensors keyed by ``(epoch, index)``.

An item's ``[3, S, S]`` uint8 image is a permuted view of the ``[S, S, 3]`` memory the transform
wrote (see :mod:`detkit.data.loader` for why); batching, sampling and the loader live there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from detkit.data.cache import ImageCache
from detkit.data.transforms import letterbox_info
from detkit.data.types import Sample

logger = logging.getLogger(__name__)

MAX_REPLACEMENTS = 16
"""Images tried in place of one that fails to load mid-epoch before the item fails."""

Transform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[Any, ...]]


class SampleSource(Protocol):
    """Anything with ``len()`` and ``load(index) -> Sample``, e.g. ``CocoDataset``."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> Sample: ...


class DetectionDataset(Dataset):
    """Reads samples from a source and applies a letterbox/augmentation transform.

    Items are dicts: ``image`` uint8 tensor ``[3, S, S]`` RGB (a view of ``[S, S, 3]`` memory);
    ``boxes`` float32 ``[n, 4]`` xyxy
    input px; ``labels`` int64 ``[n]``; ``image_id`` int; ``info`` ``LetterboxInfo``;
    ``path`` str.
    """

    def __init__(
        self,
        source: SampleSource,
        transform: Transform,
        seed: int = 0,
        cache: ImageCache | None = None,
    ) -> None:
        """Wrap ``source``; ``transform`` is usually ``build_transforms(...)``.

        Args:
            source: anything with ``len()`` and ``load(i) -> Sample``.
            transform: ``(image HxWx3 uint8, boxes [N,4] xyxy orig px, labels [N]) -> (image
                SxSx3 uint8, boxes [M,4] xyxy input px, labels [M], LetterboxInfo)``. A
                :class:`~detkit.data.transforms.DetectionTransform` whose ``augment.mosaic`` is
                positive also makes mosaics (see :meth:`__getitem__`).
            seed: base seed of the augmentation randomness (see :meth:`__getitem__`).
            cache: letterbox-resized images of ``source`` in RAM (:class:`ImageCache`, built for
                the transform's ``img_size``); items are identical with and without it.
        """
        self.source = source
        self.transform = transform
        self.seed = seed
        self.cache = cache

    def __len__(self) -> int:
        """Number of images in the source."""
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Load, transform and convert one item to tensors (see the class docstring).

        ``key`` is an index, or ``(epoch, index)`` as :class:`EpochBatchSampler` yields. The
        transform is reseeded from ``(seed, epoch, index)`` before each item, and the same seed
        decides whether the item is a mosaic and picks its three partner images; the mosaic
        switch-off reads ``epoch`` from the key. So an item's pixels depend on nothing else: not
        the worker that loads it, not the number of workers, not what was loaded before, not the
        trainer's state. A resumed run therefore sees the same pixels.
        """
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = item_seed(self.seed, epoch, index)
        set_seed = getattr(self.transform, "set_seed", None)
        if set_seed is not None:
            set_seed(seed)
        failed: list[str] = []
        sample, orig = self._load(index, failed)
        rng = self._mosaic_rng(seed, epoch)
        if rng is not None:
            partners = rng.integers(0, len(self.source), size=3).tolist()
            loaded = [sample] + [self._load(j, failed)[0] for j in partners]
            items = [(s.image, s.boxes, s.labels) for s in loaded]
            image, boxes, labels, info = self.transform.mosaic(items, rng)
        else:
            image, boxes, labels, info = self.transform(sample.image, sample.boxes, sample.labels)
        if orig is not None:  # the cache resized the image: map to the file's pixels
            info = letterbox_info(*orig, self.transform.img_size)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": int(sample.image_id),
            "info": info,
            "path": sample.path,
            "failed": failed,
        }

    def _load(self, index: int, failed: list[str]) -> tuple[Sample, tuple[int, int] | None]:
        """The sample, and the original ``(height, width)`` when it came resized from the cache.

        Every image decoded once when the split was opened, so a failure here means the file
        changed or broke since. The run goes on: the next image (``index + 1``, ...) stands in,
        the same one on every run and resume, and the failure is logged and appended to
        ``failed`` (the batch carries it to the trainer, which counts it).

        Raises:
            ValueError: :data:`MAX_REPLACEMENTS` images in a row failed.
        """
        for k in range(MAX_REPLACEMENTS):
            j = (index + k) % len(self.source)
            try:
                if self.cache is None:
                    return self.source.load(j), None
                return self.cache.load(j)
            except (ValueError, OSError) as e:
                logger.warning("skipped an image that no longer loads (%s)", e)
                failed.append(str(e))
        raise ValueError(f"{MAX_REPLACEMENTS} images in a row from item {index} failed to load")

    def _mosaic_rng(self, seed: int, epoch: int) -> np.random.Generator | None:
        """A generator (seeded from the item) when this item is a mosaic, else None.

        It then picks the three partner images and the mosaic centre, so both depend on the
        item's ``(seed, epoch, index)`` only.
        """
        augment = getattr(self.transform, "augment", None)
        if augment is None or not getattr(self.transform, "train", False):
            return None
        if not augment.mosaic_active(epoch):
            return None
        rng = np.random.default_rng(seed)
        return rng if rng.random() < augment.mosaic else None


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that mixes ``(seed, epoch, index)`` well (numpy SeedSequence).

    Example:
        >>> item_seed(0, 1, 2) == item_seed(0, 1, 2) != item_seed(0, 2, 1)
        True
    """
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])

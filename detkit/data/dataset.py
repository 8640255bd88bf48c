"""The torch dataset: a source's samples, transformed, as tensors keyed by ``(epoch, index)``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from detkit.data.cache import ImageCache
from detkit.data.transforms import DetectionTransform, letterbox_info
from detkit.data.types import Sample

if TYPE_CHECKING:
    from detkit.core.protocols import DetectionSplit

logger = logging.getLogger(__name__)

MAX_REPLACEMENTS = 16
"""Images tried in place of one that fails to load mid-epoch before the item fails."""


class DetectionDataset(Dataset):
    """Items are dicts: ``image`` uint8 ``[3, S, S]`` RGB (a view of ``[S, S, 3]`` memory),
    ``boxes`` float32 ``[n, 4]`` xyxy input px, ``labels`` int64 ``[n]``, ``image_id``,
    ``info`` (``LetterboxInfo``), ``path``, ``failed``."""

    def __init__(
        self,
        source: DetectionSplit,
        transform: DetectionTransform,
        seed: int = 0,
        cache: ImageCache | None = None,
    ) -> None:
        """``cache`` (built for the transform's ``img_size``) changes no item."""
        self.source, self.transform, self.seed, self.cache = source, transform, seed, cache

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(
        self, key: int | tuple[int, int] | tuple[int, int, tuple[int, ...]]
    ) -> dict[str, Any]:
        """The item of ``index``, ``(epoch, index)`` or ``(epoch, index, pool)``: a function of
        the key alone (reseeded from ``(seed, epoch, index)``, which also decides the mosaic and
        draws its partners from ``pool``, else the whole source), so resumes see the same pixels."""
        epoch, index, pool = key if isinstance(key, tuple) and len(key) == 3 else (*_key(key), None)
        return self._item(epoch, index, pool, {})

    def __getitems__(self, keys: list[int | tuple[int, int]]) -> list[dict[str, Any]]:
        """Item ``k`` is ``self[(epoch_k, index_k, pool)]`` with the batch's indices as
        ``pool``; each image of the batch is read and letterbox-resized once."""
        parsed = [_key(k) for k in keys]
        pool = tuple(index for _, index in parsed)
        shared: dict[int, tuple] = {}
        return [self._item(epoch, index, pool, shared) for epoch, index in parsed]

    def _item(
        self, epoch: int, index: int, pool: tuple[int, ...] | None, shared: dict[int, tuple]
    ) -> dict[str, Any]:
        """The item of ``(epoch, index)``, mosaic partners drawn from ``pool`` (None: every
        image); ``shared`` keeps each image's letterboxed form for the other items of a batch."""
        seed = item_seed(self.seed, epoch, index)
        if (set_seed := getattr(self.transform, "set_seed", None)) is not None:
            set_seed(seed)
        failed: list[str] = []
        sample, orig, letterboxed = self._letterboxed(index, failed, shared)
        if (rng := self._mosaic_rng(seed, epoch)) is not None:
            choices = range(len(self.source)) if pool is None else pool
            partners = [choices[k] for k in rng.integers(0, len(choices), size=3).tolist()]
            parts = [letterboxed] + [self._letterboxed(j, failed, shared)[2] for j in partners]
            image, boxes, labels = self.transform.mosaic_letterboxed(parts, rng)
        else:
            image, boxes, labels = self.transform.finish(*letterboxed)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": int(sample.image_id),
            "info": letterbox_info(*orig, self.transform.img_size),
            "path": sample.path,
            "failed": failed,
        }

    def _letterboxed(
        self, index: int, failed: list[str], shared: dict[int, tuple]
    ) -> tuple[Sample, tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(sample, its file's (height, width), its letterboxed (image, boxes input px,
        labels))``, from ``shared`` when this batch has read it already."""
        if index not in shared:
            sample, orig = self._load(index, failed)
            size = orig if orig is not None else sample.image.shape[:2]
            shared[index] = (sample, size, self.transform.letterboxed(sample.image, sample.boxes, sample.labels))  # fmt: skip
        return shared[index]

    def _load(self, index: int, failed: list[str]) -> tuple[Sample, tuple[int, int] | None]:
        """The sample, and its original ``(height, width)`` when it came resized from the cache;
        a failing image (changed since the check) goes into ``failed`` and the next stands in.
        ValueError when :data:`MAX_REPLACEMENTS` images in a row failed."""
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
        """A generator seeded from the item when it is a mosaic (it then draws the partners and
        the centre), else None."""
        augment = getattr(self.transform, "augment", None)
        if augment is None or not getattr(self.transform, "train", False):
            return None
        if not augment.mosaic_active(epoch):
            return None
        rng = np.random.default_rng(seed)
        return rng if rng.random() < augment.mosaic else None


def _key(key: int | tuple[int, int]) -> tuple[int, int]:
    """``(epoch, index)`` of a loader key: an index means epoch 0."""
    return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (0, int(key))


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that mixes ``(seed, epoch, index)`` well (numpy SeedSequence).

    Example:
        >>> item_seed(0, 1, 2) == item_seed(0, 1, 2) != item_seed(0, 2, 1)
        True
    """
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])

"""Torch dataset, batch record, collate and a seeded DataLoader.

Images travel as uint8 from the workers to the training step (4x less inter-process traffic than
float32); ``images_to_float`` is the one place where the division by 255 happens.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from detkit.data.types import LetterboxInfo, Sample

Transform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[Any, ...]]


class SampleSource(Protocol):
    """Anything with ``len()`` and ``load(index) -> Sample``, e.g. ``CocoDataset``."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> Sample: ...


class DetectionDataset(Dataset):
    """Reads samples from a source and applies a letterbox/augmentation transform.

    Items are dicts: ``image`` uint8 tensor ``[3, S, S]`` RGB; ``boxes`` float32 ``[n, 4]`` xyxy
    input px; ``labels`` int64 ``[n]``; ``image_id`` int; ``info`` ``LetterboxInfo``;
    ``path`` str.
    """

    def __init__(self, source: SampleSource, transform: Transform) -> None:
        """Wrap ``source``; ``transform`` is usually ``build_transforms(...)``.

        Args:
            source: anything with ``len()`` and ``load(i) -> Sample``.
            transform: ``(image HxWx3 uint8, boxes [N,4] xyxy orig px, labels [N]) -> (image
                SxSx3 uint8, boxes [M,4] xyxy input px, labels [M], LetterboxInfo)``.
        """
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        """Number of images in the source."""
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Load, transform and convert one item to tensors (see the class docstring)."""
        sample = self.source.load(index)
        image, boxes, labels, info = self.transform(sample.image, sample.boxes, sample.labels)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "image_id": int(sample.image_id),
            "info": info,
            "path": sample.path,
        }

    def set_seed(self, seed: int) -> None:
        """Reseed the transform's private random state, when it has one."""
        set_seed = getattr(self.transform, "set_seed", None)
        if set_seed is not None:
            set_seed(seed)


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        images: uint8 ``[B, 3, S, S]`` RGB; see ``images_to_float``.
        targets: float32 ``[M, 6]``, rows ``(batch_index, label, x1, y1, x2, y2)``, boxes xyxy in
            input px; ``M`` is the number of boxes in the batch (may be 0).
        image_ids: source image id of each image, length ``B``.
        infos: letterbox map of each image, length ``B``.
        paths: file of each image, length ``B``.
    """

    images: torch.Tensor
    targets: torch.Tensor
    image_ids: list[int]
    infos: list[LetterboxInfo]
    paths: list[str]

    def pin_memory(self) -> Batch:
        """Return a copy with page-locked tensors (called by ``DataLoader(pin_memory=True)``)."""
        return self._with(self.images.pin_memory(), self.targets.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Return a copy with the tensors on ``device`` (the batch itself is not modified)."""
        images = self.images.to(device, non_blocking=non_blocking)
        return self._with(images, self.targets.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        """Number of images ``B``."""
        return self.images.shape[0]

    def _with(self, images: torch.Tensor, targets: torch.Tensor) -> Batch:
        return Batch(images, targets, list(self.image_ids), list(self.infos), list(self.paths))


def collate(items: list[dict[str, Any]]) -> Batch:
    """Stack ``DetectionDataset`` items into a ``Batch``.

    Args:
        items: dicts as returned by ``DetectionDataset.__getitem__``; all images ``[3, S, S]``.

    Returns:
        A ``Batch`` whose ``targets`` rows are ``(batch_index, label, x1, y1, x2, y2)``, boxes
        xyxy in input px.
    """
    images = torch.stack([item["image"] for item in items])
    rows = []
    for index, item in enumerate(items):
        boxes = item["boxes"].reshape(-1, 4).float()
        labels = item["labels"].reshape(-1, 1).float()
        batch_index = torch.full_like(labels, float(index))
        rows.append(torch.cat([batch_index, labels, boxes], dim=1))
    targets = torch.cat(rows) if rows else torch.zeros((0, 6), dtype=torch.float32)
    return Batch(
        images=images,
        targets=targets,
        image_ids=[int(item["image_id"]) for item in items],
        infos=[item["info"] for item in items],
        paths=[item["path"] for item in items],
    )


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """Convert uint8 images to float32 in ``[0, 1]`` (the one place the /255 happens).

    Args:
        images: uint8 ``[B, 3, H, W]`` (any leading shape works); not modified.

    Returns:
        float32 tensor of the same shape and device, values in ``[0, 1]``.

    Raises:
        TypeError: ``images`` is not uint8.

    Example:
        >>> images_to_float(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
        tensor([[[[0., 1.]]]])
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    return images.to(torch.float32).div_(255.0)


def _seed_datasets(dataset: Any, seed: int) -> None:
    """Call ``set_seed`` on ``dataset`` or the datasets it wraps (Subset, ConcatDataset)."""
    set_seed = getattr(dataset, "set_seed", None)
    if set_seed is not None:
        set_seed(seed)
    inner: Iterable[Any] = getattr(dataset, "datasets", [])
    if hasattr(dataset, "dataset"):
        inner = [dataset.dataset]
    for child in inner:
        _seed_datasets(child, seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy, random and the dataset's transforms.

    The per-worker seed is ``torch.initial_seed()``, which the DataLoader derives from its own
    seeded generator and the worker id, so results depend only on the loader's seed.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        _seed_datasets(info.dataset, seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    workers: int,
    seed: int,
    pin_memory: bool = False,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` yielding ``Batch`` objects, deterministic given ``seed``.

    With ``workers == 0`` the dataset's transform is reseeded here from ``seed`` (this mutates
    the transform's random state); with workers, each worker seeds itself (``seed_worker``).

    Args:
        dataset: usually a ``DetectionDataset``.
        batch_size: images per batch.
        train: shuffle (unless ``sampler`` is given) and drop the last partial batch.
        workers: number of worker processes; 0 loads in the main process.
        seed: seeds the shuffle order and every random augmentation.
        pin_memory: page-locked batches for faster host-to-GPU copies.
        sampler: e.g. a ``DistributedSampler``; it then owns the order (call its
            ``set_epoch`` yourself).

    Returns:
        A ``torch.utils.data.DataLoader`` with ``collate`` as its ``collate_fn``.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if workers == 0:
        _seed_datasets(dataset, seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=train,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=workers > 0,
    )

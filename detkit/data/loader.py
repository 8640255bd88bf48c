"""Batches, the epoch-keyed sampler and a seeded DataLoader. Images stay uint8 and channel-last
(``[B, 3, S, S]`` views of ``[B, S, S, 3]`` memory) until ``images_to_float``, the one place
that divides by 255 and writes the model's layout."""

from __future__ import annotations

import atexit
import copy
import ctypes
import functools
import multiprocessing
import os
import random
import shutil
import signal
import sys
import weakref
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from detkit.data.dataset import DetectionDataset
from detkit.data.scan import catch_decoder_output_here
from detkit.data.types import LetterboxInfo


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` keys, a pure function of ``(seed, epoch, rank)``: a
    permutation drawn from ``seed + epoch`` (unshuffled: ``0..n-1``), every ``world_size``-th
    index per DDP rank (padded by wrapping); ``start`` (batches to skip in the next pass only)
    resumes mid-epoch exactly."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.world_size > 1 and order:
            per_rank = -(-len(order) // self.world_size)
            order = (order * self.world_size)[: per_rank * self.world_size]
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self):
        order, b = self._indices(), self.batch_size
        batches = [order[i : i + b] for i in range(0, len(order), b)]
        if self.drop_last and batches and len(batches[-1]) < b:
            batches.pop()
        start, self.start = self.start, 0
        for batch in batches[start:]:
            yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        n = -(-self.num_samples // self.world_size) if self.world_size > 1 else self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Point a :func:`build_loader` loader at ``epoch``, skipping its first ``start_batch``."""
    loader.batch_sampler.epoch, loader.batch_sampler.start = epoch, start_batch


@dataclass
class Batch:
    """A collated batch: ``images`` uint8 ``[B, 3, S, S]`` RGB (a view of ``[B, S, S, 3]``
    memory), ``targets`` float32 ``[M, 6]`` rows ``(batch_index, label, x1, y1, x2, y2)`` input
    px, per-image ``image_ids``, ``infos``, ``paths``; ``failed``: why replaced images failed."""

    images: torch.Tensor
    targets: torch.Tensor
    image_ids: list[int]
    infos: list[LetterboxInfo]
    paths: list[str]
    failed: list[str] = field(default_factory=list)

    def pin_memory(self) -> Batch:
        """A copy with page-locked tensors (``DataLoader(pin_memory=True)`` calls it)."""
        return self._with(self.images.pin_memory(), self.targets.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with the tensors on ``device``; the batch is not modified."""
        images = self.images.to(device, non_blocking=non_blocking)
        return self._with(images, self.targets.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.images.shape[0]

    def _with(self, images: torch.Tensor, targets: torch.Tensor) -> Batch:
        return Batch(
            images, targets, list(self.image_ids), list(self.infos), list(self.paths),
            list(self.failed),
        )  # fmt: skip


def collate(items: list[dict[str, Any]]) -> Batch:
    """Stack ``DetectionDataset`` items (images ``[3, S, S]``) into a ``Batch``; images keep
    channel-last memory (a plain copy), targets are ``[M, 6]`` xyxy input px."""
    images = torch.stack([item["image"].permute(1, 2, 0) for item in items]).permute(0, 3, 1, 2)
    rows = []
    for index, item in enumerate(items):
        boxes = item["boxes"].reshape(-1, 4).float()
        labels = item["labels"].reshape(-1, 1).float()
        rows.append(torch.cat([torch.full_like(labels, float(index)), labels, boxes], dim=1))
    targets = torch.cat(rows) if rows else torch.zeros((0, 6), dtype=torch.float32)
    ids, infos, paths = ([item[k] for item in items] for k in ("image_id", "info", "path"))
    failed = [reason for item in items for reason in item.get("failed", ())]
    return Batch(images, targets, [int(i) for i in ids], infos, paths, failed)


def images_to_float(
    images: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` (any layout, not modified) -> float32 in ``[0, 1]``, same shape and
    device, in ``memory_format`` (one pass); TypeError when not uint8.

    Example:
        >>> images_to_float(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
        tensor([[[[0., 1.]]]])
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    return images.to(torch.float32, memory_format=memory_format).div_(255.0)


def seed_worker(worker_id: int, opencv_threads: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and random, :func:`keep_freed_memory`, count
    decoder messages as damage, ignore SIGINT/SIGTERM (the main process decides when to stop).
    ``opencv_threads`` is for workers that were not forked (in a forked one it can deadlock)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    keep_freed_memory()
    catch_decoder_output_here()  # a decoder warning mid-epoch is counted as at the scan
    if opencv_threads is not None:
        cv2.setNumThreads(opencv_threads)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sys.excepthook = _quiet_peer_resets


def _quiet_peer_resets(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    """A worker's excepthook that drops reset and broken connections (multiprocessing's
    ``resource_sharer`` thread meeting a main process gone mid-handshake) and passes the rest on."""
    if not issubclass(kind, ConnectionResetError | BrokenPipeError):
        sys.__excepthook__(kind, value, tb)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (32 and 128 MiB) in the calling process (loader
    workers only), so the megabyte buffers each item frees are reused, not faulted in again;
    False where the C library is not glibc (nothing is changed)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 128 << 20)
    )


def shm_shortfall(
    workers: int, batch: int, img_size: int, processes: int = 1, path: str = "/dev/shm"
) -> str:
    """Why ``path`` is too small for ``processes x workers x 2`` prefetched uint8 batches
    (a worker would die of a bus error mid-epoch); ``""`` when it fits, with no workers, or
    where there is no such folder.

    Example:
        >>> shm_shortfall(0, 16, 640)
        ''
    """
    if workers == 0:
        return ""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return ""
    need = processes * workers * 2 * batch * img_size * img_size * 3
    if need <= free:
        return ""
    ranks = f" x {processes} processes" if processes > 1 else ""
    return (
        f"{path} has {free / 2**20:.0f} MiB free, and {workers} loader workers x 2 prefetched "
        f"batches of {batch} images at {img_size} px{ranks} need about {need / 2**20:.0f} MiB "
        "there: a worker will die of a bus error. Give the container more shared memory "
        "(docker run --shm-size=8g; on Kubernetes a memory-backed emptyDir on /dev/shm), or "
        "lower workers= or batch="
    )


_OPEN: weakref.WeakSet[Loader] = weakref.WeakSet()


WORKER_OPENCV_THREADS = 1
"""OpenCV threads per loader worker: the workers are the parallelism (no oversubscription)."""


def usable_workers(requested: int, local_processes: int | None = None) -> int:
    """``requested`` capped at this process's CPU affinity divided by ``local_processes``
    (default ``LOCAL_WORLD_SIZE``, else 1).

    Example:
        >>> usable_workers(0), usable_workers(8, local_processes=10**6)
        (0, 0)
    """
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(requested, (cores or 1) // max(1, local_processes)))


class Loader(DataLoader):
    """A DataLoader whose persistent workers end at :meth:`close` or its ``with`` block; they
    ignore SIGTERM, so one left open is closed at exit before multiprocessing's handler waits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.num_workers > 0:
            _close_at_exit(self)

    def _get_iterator(self) -> Any:
        """Workers fork in here: OpenCV's thread count is set for them around the fork."""
        if self.num_workers == 0:
            return super()._get_iterator()
        before = cv2.getNumThreads()
        cv2.setNumThreads(WORKER_OPENCV_THREADS)
        try:
            return super()._get_iterator()
        finally:
            cv2.setNumThreads(before)

    def close(self) -> None:
        """Shut down the current pass's workers; idempotent, and the loader stays iterable."""
        it, self._iterator = self._iterator, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_at_exit(loader: Loader) -> None:
    """Register after torch imported multiprocessing, so atexit runs this handler first."""
    if not _OPEN:
        atexit.unregister(_close_open_loaders)  # one registration, however often it empties
        atexit.register(_close_open_loaders)
    _OPEN.add(loader)


def _close_open_loaders() -> None:
    for loader in list(_OPEN):
        loader.close()


def build_loader(
    dataset: DetectionDataset,
    batch_size: int,
    train: bool,
    workers: int,
    seed: int,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Loader:
    """A :class:`Loader` of :class:`Batch` objects (close it: workers persist); with
    :func:`set_loader_epoch` before each epoch, a batch is a function of ``(seed, epoch, batch,
    rank)`` alone, with 0 or N workers. ``dataset`` is not changed (a shallow copy carries
    ``seed``); ``train`` shuffles and drops the last partial batch."""
    if getattr(dataset, "seed", seed) != seed:
        dataset = copy.copy(dataset)  # the caller's dataset keeps its own seed
        dataset.seed = seed
    sampler = EpochBatchSampler(
        len(dataset), batch_size, shuffle=train, seed=seed, drop_last=train,
        rank=rank, world_size=world_size,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    workers = usable_workers(workers)
    forked = multiprocessing.get_start_method() == "fork"
    init = functools.partial(seed_worker, opencv_threads=None if forked else WORKER_OPENCV_THREADS)
    return Loader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=init,
        generator=generator,
        persistent_workers=workers > 0,
    )

"""Batches, the epoch-keyed sampler and a seeded DataLoader.

Images travel as uint8 from the workers to the training step (4x less inter-process traffic than
float32), in the channel-last memory the augmentation produced: an item's ``[3, S, S]`` image
and a batch's ``[B, 3, S, S]`` images are permuted views of ``[S, S, 3]`` / ``[B, S, S, 3]``
memory, so no worker spends a pass transposing pixels. ``images_to_float`` is the one place where
the division by 255 happens, and it writes the layout the model wants in the same pass.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import ctypes
import functools
import multiprocessing
import os
import random
import shutil
import signal
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from detkit.data.dataset import DetectionDataset
from detkit.data.scan import catch_decoder_output_here
from detkit.data.types import LetterboxInfo


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` keys, a pure function of ``(seed, epoch, rank)``.

    The order of an epoch is a permutation drawn from ``seed + epoch`` (or ``0..n-1`` without
    shuffling). Under DDP each of ``world_size`` ranks takes every ``world_size``-th index of
    that permutation (padded by wrapping around so all ranks get equally many), so the ranks
    see disjoint shares. :meth:`set_epoch` picks the epoch; :meth:`set_start` skips the first
    batches of the next pass, so a run resumed mid-epoch continues with exactly the batches it
    would have seen.

    Args:
        num_samples: dataset length.
        batch_size: images per batch on this rank.
        shuffle: permute each epoch.
        seed: base seed.
        drop_last: drop a final partial batch.
        rank, world_size: this process's share under DDP.
    """

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

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order for the next pass."""
        self.epoch = epoch

    def set_start(self, batch: int) -> None:
        """Skip the first ``batch`` batches of the next pass only."""
        self.start = batch

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
    loader.batch_sampler.set_epoch(epoch)
    loader.batch_sampler.set_start(start_batch)


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        images: uint8 ``[B, 3, S, S]`` RGB, stored channel-last (a permuted view of
            ``[B, S, S, 3]``); see ``images_to_float``.
        targets: float32 ``[M, 6]``, rows ``(batch_index, label, x1, y1, x2, y2)``, boxes xyxy in
            input px; ``M`` is the number of boxes in the batch (may be 0).
        image_ids: source image id of each image, length ``B``.
        infos: letterbox map of each image, length ``B``.
        paths: file of each image, length ``B``.
        failed: why each image that failed to load for this batch (and was replaced) failed.
    """

    images: torch.Tensor
    targets: torch.Tensor
    image_ids: list[int]
    infos: list[LetterboxInfo]
    paths: list[str]
    failed: list[str] = field(default_factory=list)

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
        return Batch(
            images, targets, list(self.image_ids), list(self.infos), list(self.paths),
            list(self.failed),
        )  # fmt: skip


def collate(items: list[dict[str, Any]]) -> Batch:
    """Stack ``DetectionDataset`` items into a ``Batch``.

    Args:
        items: dicts as returned by ``DetectionDataset.__getitem__``; all images ``[3, S, S]``.

    Returns:
        A ``Batch`` whose ``images`` are ``[B, 3, S, S]`` in ``[B, S, S, 3]`` memory (stacking
        the channel-last items as they are is a plain copy; stacking them into channel-first
        memory was 7x slower) and whose ``targets`` rows are ``(batch_index, label, x1, y1, x2,
        y2)``, boxes xyxy in input px.
    """
    images = torch.stack([item["image"].permute(1, 2, 0) for item in items]).permute(0, 3, 1, 2)
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
        failed=[reason for item in items for reason in item.get("failed", ())],
    )


def images_to_float(
    images: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """Convert uint8 images to float32 in ``[0, 1]`` (the one place the /255 happens).

    Args:
        images: uint8 ``[B, 3, H, W]`` in any memory layout (any leading shape works); not
            modified.
        memory_format: layout of the result (``torch.channels_last`` needs 4 dimensions); the
            conversion and any change of layout are one pass.

    Returns:
        float32 tensor of the same shape and device, values in ``[0, 1]``, in ``memory_format``.

    Raises:
        TypeError: ``images`` is not uint8.

    Example:
        >>> images_to_float(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
        tensor([[[[0., 1.]]]])
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    return images.to(torch.float32, memory_format=memory_format).div_(255.0)


def seed_worker(worker_id: int, opencv_threads: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and random in each worker.

    Augmentation does not depend on this (items reseed their transform from their key); it keeps
    any other library randomness in workers reproducible too. Also :func:`keep_freed_memory`.
    ``opencv_threads`` sets OpenCV's thread count in a worker that was *not* forked (spawn,
    forkserver: a fresh process whose OpenCV pool never ran); a forked worker inherits the count
    :class:`Loader` sets before it forks (changing it in a forked worker whose parent has used
    OpenCV's pool can deadlock).

    Workers ignore SIGINT and SIGTERM: torchrun, SLURM, ``timeout`` and a terminal signal the
    whole process group, and a worker killed by it makes the main process raise where it
    stands, losing the epoch. The main process decides when to stop; the workers exit through
    the loader's shutdown (and on their own when the main process is gone).

    Decoder messages in a worker are counted as damage (:func:`detkit.data.scan.catch_decoder_output`).
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    keep_freed_memory()
    catch_decoder_output_here()  # a decoder warning mid-epoch is counted as at the scan
    if opencv_threads is not None:
        cv2.setNumThreads(opencv_threads)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Let glibc's malloc reuse freed image buffers instead of returning them to the system.

    Every loaded item allocates and frees a few arrays of about a megabyte (decoded image,
    canvas, augmented copy). By default glibc serves such blocks with ``mmap`` or gives the
    freed top of its heap back, so each new buffer is fresh pages, and page faults cost as much
    as the letterbox and the augmentation together (at 640 px, 0.7 of the 1.6 ms they added
    to a 2 ms decode; ``bench/bench_data.py`` with and without). This raises the ``mmap`` and
    trim thresholds of the calling process, which then keeps up to ``trim_threshold`` bytes
    of freed memory for reuse. The loader calls it in each worker process only: a library does
    not retune its caller's allocator, so loading with ``workers=0`` goes without (measured
    with 48 images at 640 px, one thread: evaluation letterbox 3.3 -> 2.7 ms per image with it,
    training augmentation 4.5 -> 3.9-4.2 ms).

    Args:
        mmap_threshold: blocks at least this large still get their own ``mmap`` (glibc caps
            it at 32 MiB on 64-bit systems).
        trim_threshold: freed memory at the top of the heap beyond this goes back to the system.

    Returns:
        True when set; False where the C library is not glibc (nothing is changed).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


def shm_shortfall(
    workers: int, batch: int, img_size: int, processes: int = 1, path: str = "/dev/shm"
) -> str:
    """What goes wrong when ``path`` (``/dev/shm``) is too small for the batches in flight;
    ``""`` when it is large enough, with no workers, or where there is no such folder.

    Worker processes hand their batches to the training process through shared memory, each
    keeping 2 prefetched batches there: ``processes x workers x 2`` uint8 batches of
    ``batch x img_size^2 x 3`` bytes (``processes``: DDP ranks on the machine). A container's
    default ``/dev/shm`` (64 MiB under Docker) is smaller than that at 640 px, and a worker
    then dies of a bus error mid-epoch.

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
"""OpenCV threads in each loader worker: the workers are the parallelism; OpenCV's own pool in
every one of them (one thread per core each) would oversubscribe the cores."""


def usable_workers(requested: int, local_processes: int | None = None) -> int:
    """Loader workers for one process: ``requested``, at most the cores this process may run
    on (its CPU affinity) divided by the training processes on this machine, as Ultralytics
    caps its ``workers``.

    Args:
        requested: the ``workers`` asked for (0: load in the main process).
        local_processes: processes sharing this machine's cores (DDP ranks on it); None: the
            ``LOCAL_WORLD_SIZE`` torchrun sets, else 1.

    Example:
        >>> usable_workers(0), usable_workers(8, local_processes=10**6)
        (0, 0)
    """
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(requested, (cores or 1) // max(1, local_processes)))


@contextlib.contextmanager
def opencv_threads(n: int) -> Iterator[None]:
    """OpenCV's thread count set to ``n`` inside the block, restored after it."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


class Loader(DataLoader):
    """A DataLoader whose worker processes end when :meth:`close` is called (or its ``with``
    block is left), and whose workers run OpenCV on :data:`WORKER_OPENCV_THREADS` thread.

    Its workers persist between passes and ignore SIGINT/SIGTERM (see :func:`seed_worker`), so
    they must be shut down explicitly: at interpreter exit, multiprocessing sends its daemonic
    children SIGTERM and then waits for them, which would be forever. A loader left open is
    closed at exit as a last resort (before multiprocessing's own exit handler runs).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.num_workers > 0:
            _close_at_exit(self)

    def _get_iterator(self) -> Any:
        """The pass's iterator; with workers, they fork inside it: OpenCV's thread count is
        set for them just before, and the calling process gets its own back right after."""
        if self.num_workers == 0:
            return super()._get_iterator()
        with opencv_threads(WORKER_OPENCV_THREADS):
            return super()._get_iterator()

    def close(self) -> None:
        """Shut down the workers of the current pass, if any; the loader can be iterated
        again afterwards (new workers start). Idempotent."""
        it, self._iterator = self._iterator, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_at_exit(loader: Loader) -> None:
    """Remember ``loader`` for :func:`_close_open_loaders`, registered with atexit at the first
    loader with workers: after torch imported multiprocessing, so atexit runs it before
    multiprocessing's own handler."""
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
    """A :class:`Loader` over ``dataset`` yielding :class:`Batch` objects, deterministic given
    ``seed``. Close it (or use it in a ``with`` block) when its work is done: its workers
    persist between passes and ignore SIGINT/SIGTERM.

    Its ``batch_sampler`` is an :class:`EpochBatchSampler`: call :func:`set_loader_epoch`
    before each epoch. Every batch is a function of ``(seed, epoch, batch number, rank)`` alone,
    with 0 or N workers alike.

    Args:
        dataset: a :class:`DetectionDataset`; the loader uses a shallow copy with ``seed`` as
            its seed when the two differ (``dataset`` itself is never changed).
        batch_size: images per batch on this rank.
        train: shuffle each epoch and drop the last partial batch.
        workers: worker processes, at most :func:`usable_workers` (the cores per local
            process), each tuned by :func:`seed_worker`; 0 loads in the main process, which is
            left as it is (about 20% slower at 640 px, see :func:`keep_freed_memory`).
        seed: seeds the order and every random augmentation.
        pin_memory: page-locked batches for faster host-to-GPU copies (CUDA only).
        rank, world_size: this process's share under DDP.
    """
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

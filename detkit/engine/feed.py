"""The trainer's data: a training and a validation loader per rank, each over its share, the
training batches as the loop takes them (timed, stopped by signals and dead workers), and their
multi-scale sizes."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from detkit.data import build_loader
from detkit.data.loader import Batch, Loader, shm_shortfall
from detkit.engine.distributed import DistContext, per_rank_batch
from detkit.engine.safety import StopSignals, worker_died

if TYPE_CHECKING:
    from types import FrameType

    from torch.utils.data import Dataset

log = logging.getLogger(__name__)


def train_val_loaders(
    train_ds: Dataset, val_ds: Dataset, batch: int, workers: int, seed: int, ctx: DistContext,
    pin_memory: bool, val_batch: int = 0,
) -> tuple[Loader, Loader]:  # fmt: skip
    """``(train, val)`` loaders of this rank's share: ``batch // world_size`` images of every
    global batch; val images ``rank, rank + world_size, ...``, ``val_batch`` (0: as training).

    Raises:
        ValueError: the batch does not split over the ranks, or the split is under one batch.
    """
    per_rank = per_rank_batch(batch, ctx)
    shard = {"workers": workers, "seed": seed, "pin_memory": pin_memory, "rank": ctx.rank,
             "world_size": ctx.world_size}  # fmt: skip
    size = getattr(getattr(train_ds, "transform", None), "img_size", 0)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if ctx.is_main and (short := shm_shortfall(workers, per_rank, size, ranks_here)):
        log.warning(short)
    train = build_loader(train_ds, per_rank, train=True, **shard)
    if len(train) == 0:
        raise ValueError(
            f"the training split has {len(train_ds)} images, fewer than one batch of {per_rank} "
            f"per process; lower batch, e.g. batch={fits_batch(len(train_ds), ctx.world_size)}"
        )
    return train, build_loader(val_ds, val_batch or per_rank, train=False, **shard)


def fits_batch(images: int, world_size: int) -> int:
    """The largest global batch (at least ``world_size``) giving every rank one full batch.

    Example:
        >>> fits_batch(8, 1), fits_batch(9, 2), fits_batch(1, 2)
        (8, 8, 2)
    """
    return max(images // world_size, 1) * world_size


@dataclass
class EpochSpeed:
    """This rank's pace over one pass: images taken, seconds spent waiting for the loader."""

    start: float = field(default_factory=time.perf_counter)
    images: int = 0
    wait: float = 0.0
    failed: int = 0  # images that failed to decode (replaced by the loader)

    def summary(self) -> tuple[float, float]:
        """``(images per second, share of the time spent waiting for data)`` so far."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return self.images / elapsed, self.wait / elapsed


def speeds_line(rows: list[tuple[float, float]]) -> str:
    """One log line of every rank's :meth:`EpochSpeed.summary`, by rank.

    Example:
        >>> speeds_line([(120.0, 0.02), (60.0, 0.5)])
        'per rank: images/s 120.0 60.0, data wait 2% 50% (slowest: rank 1, 0.50x the fastest)'
    """
    if len(rows) == 1:
        return f"training: {rows[0][0]:.1f} images/s, data wait {rows[0][1]:.0%} of the time"
    fast = max(r[0] for r in rows)
    slow = min(range(len(rows)), key=lambda r: rows[r][0])
    ratio = rows[slow][0] / fast if fast > 0 else 1.0
    return (
        f"per rank: images/s {' '.join(f'{r[0]:.1f}' for r in rows)}, "
        f"data wait {' '.join(f'{r[1]:.0%}' for r in rows)} "
        f"(slowest: rank {slow}, {ratio:.2f}x the fastest)"
    )


def until_signal(loader: Loader, signals: StopSignals, speed: EpochSpeed) -> Iterator[Batch]:
    """The loader's batches, counted and timed in ``speed``; a worker that dies while a stop
    signal is pending ends the pass (so the trainer can still save).

    Raises:
        LoaderWorkerError: a worker died otherwise; raised here, between two batches, not by
            torch's SIGCHLD handler into whatever line runs (an optimiser step, a save).
    """
    it = None
    with contextlib.ExitStack() as stack:
        while True:
            asked = time.perf_counter()
            try:
                if it is None:
                    it = iter(loader)
                    stack.enter_context(_deaths_at_next_batch())  # after torch's handler is set
                batch = next(it)
            except StopIteration:
                return
            except (RuntimeError, ConnectionError, EOFError) as e:
                if signals.received is not None:
                    return
                error = worker_died(e)
                if error is not e:
                    loader.close()  # torch's handler must not find the dead pid again
                raise error from e
            speed.wait += time.perf_counter() - asked
            speed.images += len(batch.paths)
            speed.failed += len(batch.failed)
            yield batch


@contextlib.contextmanager
def _deaths_at_next_batch() -> Iterator[None]:
    """Keep torch's SIGCHLD handler from raising a dead worker asynchronously (the loader
    raises it at its next batch); a no-op off the main thread or without SIGCHLD."""
    sigchld = getattr(signal, "SIGCHLD", None)
    previous = signal.getsignal(sigchld) if sigchld is not None else None
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):
            previous(signum, frame)

    signal.signal(sigchld, handler)
    try:
        yield
    finally:
        signal.signal(sigchld, previous)


def multiscale_size(
    seed: int, epoch: int, batch: int, img_size: int, ratio: float, stride: int = 32
) -> int:
    """The square input size of one batch, a pure function of ``(seed, epoch, batch)`` (so a
    resumed run and every DDP rank pick the same): uniform over multiples of ``stride`` in
    ``[img_size * (1 - ratio), img_size * (1 + ratio)]`` (at least one stride); ``ratio`` 0:
    ``img_size``.

    Example:
        >>> sizes = {multiscale_size(0, 0, b, 320, 0.5) for b in range(200)}
        >>> min(sizes), max(sizes), all(s % 32 == 0 for s in sizes)
        (160, 480, True)
        >>> multiscale_size(0, 0, 0, 320, 0.0)
        320
    """
    if ratio <= 0:
        return img_size
    low = max(int(img_size * (1 - ratio)) // stride, 1)
    high = max(int(img_size * (1 + ratio)) // stride, low)
    rng = np.random.default_rng([seed, epoch, batch, 0x5CA1E])
    return int(rng.integers(low, high + 1)) * stride


def resize_batch(
    images: torch.Tensor, targets: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float ``[B, 3, S, S]`` images and ``[M, 6]`` targets ``(batch_index, label, x1, y1, x2,
    y2)`` (xyxy input px) resized to ``size x size``: ``(images [B, 3, size, size], targets)``
    in px of the new input (arguments not modified)."""
    current = images.shape[-1]
    if size == current:
        return images, targets
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    scale = torch.ones(6, dtype=targets.dtype, device=targets.device)
    scale[2:] = size / current
    return images, targets * scale

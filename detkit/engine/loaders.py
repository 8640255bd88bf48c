"""The trainer's data: a sharded training loader per rank, the validation loader on rank 0."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from detkit.data import build_loader
from detkit.engine.distributed import DistContext, per_rank_batch
from detkit.engine.safety import StopSignals


def train_val_loaders(
    train_ds: Any, val_ds: Any, batch: int, workers: int, seed: int, ctx: DistContext,
    pin_memory: bool,
) -> tuple[DataLoader, DataLoader | None]:  # fmt: skip
    """``(train, val)`` loaders over the two splits' torch datasets (augmented and not, see
    :func:`detkit.build.build_detection_dataset`); each rank gets ``batch // world_size``
    images of every global batch (its own share of the epoch's permutation), only rank 0 gets
    a validation loader.

    Raises:
        ValueError: the batch does not split over the ranks, or the split is smaller than one
            batch (training would do nothing).
    """
    per_rank = per_rank_batch(batch, ctx)
    train = build_loader(
        train_ds, per_rank, train=True, workers=workers, seed=seed, pin_memory=pin_memory,
        rank=ctx.rank, world_size=ctx.world_size,
    )  # fmt: skip
    if len(train) == 0:
        raise ValueError(
            f"the training split has {len(train_ds)} images, fewer than one batch of {per_rank} "
            "per process; lower batch"
        )
    if not ctx.is_main:
        return train, None
    val = build_loader(
        val_ds, per_rank, train=False, workers=workers, seed=seed, pin_memory=pin_memory
    )
    return train, val


def until_signal(loader: DataLoader, signals: StopSignals) -> Iterator[Any]:
    """The loader's batches. Its workers ignore SIGINT/SIGTERM (see
    :func:`detkit.data.loader.seed_worker`), so a stop signal to the whole process group leaves
    them running; should one die anyway while a stop is pending, the pass ends instead of
    raising, so the trainer can still save. Starting the workers (``iter``) is guarded too."""
    it = None
    while True:
        try:
            it = iter(loader) if it is None else it
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError:
            if signals.received is None:
                raise
            return
        yield batch

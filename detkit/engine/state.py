"""The counters of a run (what moves at every optimiser update and must survive a resume), and
the options of its loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from detkit.losses.base import PARTS


def _zero_sums() -> dict[str, float]:
    return dict.fromkeys(PARTS, 0.0)


@dataclass
class TrainState:
    """Progress of a run, saved in every checkpoint (plain Python data).

    Attributes:
        epoch: finished epochs.
        step: batches used so far, in all epochs (one per rank under DDP: a global batch).
        batch_in_epoch: batches of the current epoch already used; always at an optimiser
            update boundary, and where the loader restarts on resume.
        epoch_sums: loss parts summed over the current epoch's finite batches; on this rank
            while training, over all ranks in a checkpoint.
        epoch_batches: how many batches ``epoch_sums`` holds.
        best_map: best validation mAP50-95 so far (-1 before the first evaluation).
        best_epoch: the epoch that reached it.
        skipped: updates skipped for a non-finite loss or gradient.
        overflows: fp16 updates the GradScaler skipped for an overflowing gradient of a finite
            loss (how it finds its scale; not failures).
        stop_reason: ``""``, ``"early_stop"``, ``"max_steps"`` or ``"interrupted"``.
        history: one metrics row per finished epoch (what metrics.csv holds).
        val_pending: the training-loss means of the last finished epoch while its validation
            has not run (``last.pt`` is written before validation); None otherwise.
        world: ``[step, processes]`` at the start and at every resume that changed the number
            of processes (see :func:`detkit.engine.resume.world_history`).
    """

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    epoch_sums: dict[str, float] = field(default_factory=_zero_sums)
    epoch_batches: int = 0
    best_map: float = -1.0
    best_epoch: int = 0
    skipped: int = 0
    overflows: int = 0
    stop_reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    world: list[list[int]] = field(default_factory=list)
    val_pending: dict[str, float] | None = None

    def add_losses(self, parts: list[list[float]]) -> None:
        """Add finite batches' loss parts (each in :data:`PARTS` order) to the epoch sums."""
        for p in parts:
            self.epoch_sums = {k: self.epoch_sums[k] + v for k, v in zip(PARTS, p, strict=True)}
        self.epoch_batches += len(parts)

    def next_epoch(self) -> None:
        """Close the current epoch: count it, restart the batch counter and loss sums."""
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.epoch_sums, self.epoch_batches = _zero_sums(), 0

    def to_dict(self, sums: list[float] | None = None) -> dict[str, Any]:
        """Checkpoint entries; ``sums`` (the loss sums over all ranks, then the batch count)
        replace this rank's own when given."""
        d = asdict(self)
        if sums is not None:
            d["epoch_sums"] = dict(zip(PARTS, sums[: len(PARTS)], strict=True))
            d["epoch_batches"] = int(sums[-1])
        return d

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], keep_sums: bool = True) -> TrainState:
        """Rebuild from :meth:`to_dict` entries (older checkpoints lack some: defaults).

        Args:
            ckpt: a checkpoint dict.
            keep_sums: take the saved epoch sums (rank 0); other ranks start from zero, so the
                sums reduced over ranks at the epoch end count them once.
        """
        state = cls(**{k: ckpt[k] for k in cls.__dataclass_fields__ if k in ckpt})
        state.stop_reason = ""
        state.history, state.world = list(state.history), [list(w) for w in state.world]
        if not keep_sums:
            state.epoch_sums, state.epoch_batches = _zero_sums(), 0
        return state


@dataclass(frozen=True)
class TrainOptions:
    """How the loop runs: the train config's fields the loop reads (their defaults and ranges
    are the config's; :func:`detkit.build.train_options` copies them), and what building chose.

    Attributes:
        epochs, batch, img_size, seed: the schedule's length, images per step (all ranks), the
            square input side, the seed of augmentation, multi-scale and the loader order.
        multi_scale: +- fraction of ``img_size`` drawn per batch (0: fixed size); sizes are
            multiples of ``stride``.
        grad_clip: gradient-norm clip (0: none). max_nonfinite: skipped updates in a row that
            stop the run (0: never).
        save_every, save_period: also write ``last.pt`` every N batches / keep ``epochN.pt``
            every N epochs (0: never). eval_every, patience, max_steps: see the config.
        val_conf: the score threshold of validation (COCO mAP counts every detection).
        cm_conf, cm_iou, error_ious: the confusion matrix's score threshold and IoU and the
            error breakdown's IoUs of the evaluation of ``best.pt`` when the run ends.
        compile, quiet, plots, ema_decay, channels_last: see the config (TensorBoard and MLflow
            are callbacks: :mod:`detkit.engine.callbacks`).
        recipe: the line naming the model recipe's values in force (logged at the start).
        val: validate at ``eval_every``; False: only after the last epoch.
        accumulate: batches per optimiser update. amp: autocast dtype, or None.
    """

    epochs: int
    batch: int
    img_size: int
    seed: int
    multi_scale: float
    grad_clip: float
    max_nonfinite: int
    save_every: int
    save_period: int
    eval_every: int
    patience: int
    max_steps: int
    val_conf: float
    cm_conf: float
    cm_iou: float
    error_ious: tuple[float, ...]
    compile: bool
    quiet: bool
    plots: bool
    val: bool
    ema_decay: float
    channels_last: bool
    recipe: str
    accumulate: int
    amp: torch.dtype | None
    stride: int

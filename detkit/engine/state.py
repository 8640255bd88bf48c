"""The counters of a run (moved at optimiser updates, saved for resume) and its loop options."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from detkit.models.losses.base import PARTS


def _zero_sums() -> dict[str, float]:
    return dict.fromkeys(PARTS, 0.0)


@dataclass
class TrainState:
    """Progress of a run, saved in every checkpoint (plain Python data)."""

    epoch: int = 0  # finished epochs
    step: int = 0  # global batches used, in all epochs
    batch_in_epoch: int = 0  # batches of the current epoch used; at an update boundary
    # loss parts summed over the epoch's finite batches, and their count: this rank's while
    # training, over all ranks in a checkpoint
    epoch_sums: dict[str, float] = field(default_factory=_zero_sums)
    epoch_batches: int = 0
    best_map: float = -1.0  # best validation mAP50-95 so far (-1 before any)
    best_epoch: int = 0
    skipped: int = 0  # non-finite updates skipped
    overflows: int = 0  # fp16 GradScaler skips (not failures)
    stop_reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    world: list[list[int]] = field(default_factory=list)  # [step, processes] at each change
    val_pending: dict[str, float] | None = None  # the epoch's loss means, validation to run

    def to_dict(self, sums: list[float] | None = None) -> dict[str, Any]:
        """Checkpoint entries; ``sums`` (the loss sums over all ranks, then the batch count)
        replace this rank's own when given."""
        d = asdict(self)
        if sums is not None:
            d["epoch_sums"] = dict(zip(PARTS, sums[: len(PARTS)], strict=True))
            d["epoch_batches"] = int(sums[-1])
        return d

    def next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.epoch_sums, self.epoch_batches = _zero_sums(), 0

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], keep_sums: bool = True) -> TrainState:
        """Rebuild from :meth:`to_dict` entries (missing ones: defaults); ``keep_sums`` on
        rank 0 alone, so the sums reduced over ranks count the saved ones once."""
        state = cls(**{k: ckpt[k] for k in cls.__dataclass_fields__ if k in ckpt})
        state.stop_reason = ""
        state.history, state.world = list(state.history), [list(w) for w in state.world]
        state.epoch_sums = dict(state.epoch_sums)  # added to in place at each update
        if not keep_sums:
            state.epoch_sums, state.epoch_batches = _zero_sums(), 0
        return state


@dataclass(frozen=True)
class TrainOptions:
    """How the loop runs: the train config's fields it reads (meanings and defaults: the config)
    and what building chose: ``batch`` is global, ``recipe`` the line logged at the start,
    ``val`` False validates only after the last epoch, ``amp`` the autocast dtype or None."""

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

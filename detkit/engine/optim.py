"""Optimisation helpers: the learning-rate schedule, gradient accumulation and the EMA of weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

SCHEDULES = ("cosine", "linear")


def lr_factor(
    update: int, total_updates: int, warmup_updates: int, schedule: str = "cosine",
    final_ratio: float = 0.05,
) -> float:  # fmt: skip
    """LR multiplier at optimiser update ``update``: linear warmup from 0.01 to 1, then a half
    cosine or a straight line down to ``final_ratio`` at ``total_updates``, flat after.

    Raises:
        ValueError: an unknown ``schedule``.

    Example:
        >>> [round(lr_factor(s, 100, 10), 3) for s in (0, 10, 55, 100)]
        [0.01, 1.0, 0.525, 0.05]
        >>> [round(lr_factor(s, 100, 10, "linear", 0.0), 3) for s in (5, 55, 100)]
        [0.505, 0.5, 0.0]
    """
    if update < warmup_updates:
        return 0.01 + 0.99 * update / warmup_updates
    progress = min((update - warmup_updates) / max(total_updates - warmup_updates, 1), 1.0)
    if schedule == "cosine":
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return final_ratio + (1 - final_ratio) * (1 - progress)
    raise ValueError(f"schedule {schedule!r} unknown; choose one of {', '.join(SCHEDULES)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_updates: int, warmup_updates: int,
    schedule: str = "cosine", final_ratio: float = 0.05,
) -> torch.optim.lr_scheduler.LambdaLR:  # fmt: skip
    """A ``LambdaLR`` stepping :func:`lr_factor` once per optimiser update (its state: the
    counter and base LRs; the curve is rebuilt from the config)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} unknown; choose one of {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda u: lr_factor(u, total_updates, warmup_updates, schedule, final_ratio)
    )


def restore_optimization(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
    saved_optimizer: dict | None, saved_scheduler: dict, position: int,
) -> None:  # fmt: skip
    """Load the saved optimiser moments (None: a slim checkpoint, they start afresh) and
    scheduler state, keeping the settings the resumed config built (lr, momentum, weight decay,
    base LRs), and continue the schedule at update ``position`` (:func:`schedule_position`)."""
    built = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    base_lrs = list(scheduler.base_lrs)
    if saved_optimizer is not None:
        optimizer.load_state_dict(saved_optimizer)
    scheduler.load_state_dict(saved_scheduler)
    scheduler.base_lrs = base_lrs
    scheduler.last_epoch = position
    factors = [f(position) for f in scheduler.lr_lambdas]
    for group, settings, base, factor in zip(
        optimizer.param_groups, built, base_lrs, factors, strict=True
    ):
        group.update(settings)
        group["lr"] = base * factor  # what LambdaLR.step sets at this position
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def schedule_position(
    epoch: int, batch_in_epoch: int, updates_per_epoch: int, accumulate: int
) -> int:
    """Optimiser updates done after ``epoch`` whole epochs and ``batch_in_epoch`` batches (at an
    update boundary) at this epoch length: a resume that changes the batch or accumulation
    continues the schedule where the epochs done put it.

    Example:
        >>> schedule_position(3, 8, 25, 4)
        77
    """
    return epoch * updates_per_epoch + batch_in_epoch // accumulate


def accumulation_steps(batch: int, nominal_batch: int) -> int:
    """Batches summed per optimiser update to reach ``nominal_batch`` (0 or <= ``batch``: 1).

    Example:
        >>> accumulation_steps(16, 64), accumulation_steps(32, 0), accumulation_steps(24, 64)
        (4, 1, 3)
    """
    return max(round(nominal_batch / batch), 1) if nominal_batch > batch else 1


def group_size(batch_in_epoch: int, batches_per_epoch: int, accumulate: int) -> int:
    """How many batches the accumulation group holding ``batch_in_epoch`` has (groups restart
    every epoch, so the last may be short; each loss is divided by its group's size).

    Example:
        >>> [group_size(b, 10, 4) for b in (0, 3, 8, 9)]
        [4, 4, 2, 2]
    """
    start = batch_in_epoch - batch_in_epoch % accumulate
    return min(accumulate, batches_per_epoch - start)


class ModelEMA:
    """Exponential moving average of a model's weights and BN statistics, the decay ramping up
    as ``min(decay, (1 + n) / (10 + n))`` over updates ``n`` (saved as ``ema_updates``)."""

    def __init__(self, model: nn.Module, decay: float = 0.99) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s float weights and BN statistics in; copy integer buffers."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        floats, sources, ints, int_sources = [], [], [], []
        for name, value in self.module.state_dict().items():
            float_value = value.dtype.is_floating_point
            (floats if float_value else ints).append(value)
            (sources if float_value else int_sources).append(current[name].detach())
        if floats:
            torch._foreach_lerp_(floats, sources, 1.0 - d)
        if ints:
            torch._foreach_copy_(ints, int_sources)

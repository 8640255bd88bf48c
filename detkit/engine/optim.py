"""Optimisation helpers: the learning-rate schedule and the EMA of the weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, final_ratio: float = 0.05
) -> float:
    """LR multiplier: linear warmup from 0.01 over ``warmup_steps``, then cosine to ``final_ratio``.

    Example:
        >>> [round(warmup_cosine(s, 100, 10), 3) for s in (0, 10, 55, 100)]
        [0.01, 1.0, 0.525, 0.05]
    """
    if step < warmup_steps:
        return 0.01 + 0.99 * step / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ModelEMA:
    """Exponential moving average of a model's weights and batch-norm statistics.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates ``n``, so
    early weights, still random, fade quickly. Evaluation and inference use :attr:`module`.
    """

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
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.lerp_(current[name].detach(), 1.0 - d)
            else:
                value.copy_(current[name])

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])

"""Element-wise loss functions with explicit reductions left to the caller."""

from __future__ import annotations

import torch


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth L1 (Huber / beta), element-wise, no reduction.

    ``0.5 * x**2 / beta`` where ``|x| < beta``, else ``|x| - 0.5 * beta``; ``beta = 0`` is L1.

    Example:
        >>> smooth_l1(torch.tensor([0.05, 2.0]), torch.zeros(2), beta=0.1)
        tensor([0.0125, 1.9500])
    """
    diff = (pred - target).abs()
    if beta <= 0:
        return diff
    return torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)

"""What every criterion shares: ``criterion(raw [B, N, 5 + C], targets [M, 6] (batch_index,
label, xyxy input px), priors, feature_sizes) -> [3]`` weighted :data:`PARTS`, each summed over
the batch and divided by its positives (at least 1), and the first-step sanity check."""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping

import torch
from torch import Tensor

log = logging.getLogger(__name__)

PARTS = ("box", "obj", "cls")


def compare_initial_losses(
    observed: Mapping[str, float], expected: Mapping[str, float], tolerance: float = 0.2
) -> list[str]:
    """Log expected vs observed first-step losses; warn about (and return) the parts off by more
    than ``tolerance`` (relative).

    Example:
        >>> compare_initial_losses({"cls": 1.4, "obj": 9.0}, {"cls": 1.386, "obj": 6.0})
        ['obj']
    """
    off = []
    for name, exp in expected.items():
        obs = observed.get(name, float("nan"))
        scale = max(abs(exp), 1e-6)
        if abs(obs - exp) > tolerance * scale and max(abs(obs), abs(exp)) > 1e-6:
            off.append(name)
    summary = ", ".join(
        f"{k} {observed.get(k, float('nan')):.4g} (expected {v:.4g})" for k, v in expected.items()
    )
    log.info("initial losses: %s", summary)
    if off:
        log.warning(
            "initial %s loss differs from a freshly initialised head's by more than %d%%: %s. "
            "Check the head's bias init and output layout (expected when resuming or "
            "fine-tuning).",
            "/".join(off),
            round(100 * tolerance),
            summary,
        )
    return off


class Criterion(abc.ABC):
    """Base of the detectors' criteria: ``__call__`` = :meth:`sums` / positives. :meth:`sums`
    gives the undivided sums and positives (the trainer divides by the positives averaged over
    DDP ranks: the criterion runs no collective) and, on the first call when ``check_init``,
    compares an ideally initialised head's loss, so a broken head (bias init, channel order)
    shows at step one."""

    def __init__(self, check_init: bool = True, tolerance: float = 0.2) -> None:
        self.check_init = check_init
        self.tolerance = tolerance
        self.initial_check: list[str] | None = None  # parts that failed, once checked

    @abc.abstractmethod
    def compute(
        self, raw: Tensor, targets: Tensor, priors: Tensor, feature_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """``([3] weighted part sums over the batch, 0-dim float number of positives)``."""

    @abc.abstractmethod
    def initial_raw(self, raw: Tensor) -> Tensor:
        """The raw output ``[B, N, 5 + C]`` of an ideally initialised head of ``raw``'s shape."""

    def sums(
        self,
        raw: Tensor,
        targets: Tensor,
        priors: Tensor,
        feature_sizes: list[tuple[int, int]] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`compute`, and on the first call the comparison with an ideal head's loss."""
        feature_sizes = feature_sizes or []
        sums, num_pos = self.compute(raw, targets, priors, feature_sizes)
        if self.check_init and self.initial_check is None:
            with torch.no_grad():
                ideal, _ = self.compute(self.initial_raw(raw.detach().float()), targets, priors,
                                        feature_sizes)  # fmt: skip
                n = num_pos.clamp(min=1.0)
                seen, best = (
                    dict(zip(PARTS, (v / n).tolist(), strict=True)) for v in (sums, ideal)
                )
            self.initial_check = compare_initial_losses(seen, best, self.tolerance)
        return sums, num_pos

    def __call__(
        self,
        raw: Tensor,
        targets: Tensor,
        priors: Tensor,
        feature_sizes: list[tuple[int, int]] | None = None,
    ) -> Tensor:
        sums, num_pos = self.sums(raw, targets, priors, feature_sizes)
        return sums / num_pos.clamp(min=1.0)

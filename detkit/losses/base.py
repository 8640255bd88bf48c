"""What every criterion shares: the call contract and the first-step sanity check.

A criterion is called as ``criterion(raw, targets, priors, feature_sizes) -> (total, parts)``
with ``raw [B, N, 5 + C]``, ``targets [M, 6]`` (batch_index, label, x1, y1, x2, y2 in input px),
the model's ``priors`` and per-level ``feature_sizes``; ``total`` is the scalar to
backpropagate, ``parts`` the detached ``box``, ``obj`` and ``cls`` terms as floats.

The parts are sums over the batch divided by :meth:`Criterion.normaliser`: the batch's number of
positives (at least 1). Under DDP the trainer runs the forward inside
:meth:`Criterion.positives_over` with a mean over ranks, so each rank divides by the global
number of positives over the number of ranks: after DDP averages the gradients, every positive
of the global batch weighs the same, and a rank whose images hold no object no longer divides
its objectness loss by 1 (a 10-100x spike).

On its first call a criterion also computes the loss an ideally initialised head would give on
the same targets (:meth:`Criterion.initial_raw`: zero box outputs and class logits, confidence
at its prior), logs both, and warns when a part differs by more than 20%: a broken head
(a forgotten bias init, a wrong channel order) shows itself there, at step one.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping

import torch

log = logging.getLogger(__name__)

Parts = Mapping[str, float]  # a LossParts: floats read from the device on first use
NumPosReducer = Callable[[torch.Tensor], torch.Tensor]  # 0-dim count -> the same on all ranks


def compare_initial_losses(observed: Parts, expected: Parts, tolerance: float = 0.2) -> list[str]:
    """Log expected vs observed first-step losses; warn about parts off by more than
    ``tolerance`` (relative). Returns the names of those parts.

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
    """Base of the detectors' criteria: ``__call__`` = :meth:`compute` + the first-call check.

    Args:
        check_init: run the first-call sanity check.
        tolerance: relative difference above which the check warns.
    """

    def __init__(self, check_init: bool = True, tolerance: float = 0.2) -> None:
        self.check_init = check_init
        self.tolerance = tolerance
        self.initial_check: list[str] | None = None  # parts that failed, once checked
        self._reduce_num_pos: NumPosReducer | None = None

    @contextlib.contextmanager
    def positives_over(self, reduce: NumPosReducer | None) -> Iterator[None]:
        """Within the context, normalise by ``reduce(number of positives)`` (e.g. its mean over
        DDP ranks; every rank must then call the criterion equally often); None: this batch's."""
        previous, self._reduce_num_pos = self._reduce_num_pos, reduce
        try:
            yield
        finally:
            self._reduce_num_pos = previous

    def normaliser(self, num_pos: int, device: torch.device) -> torch.Tensor:
        """What the summed loss parts are divided by: ``num_pos`` (reduced over ranks inside
        :meth:`positives_over`), at least 1; a 0-dim float32 tensor on ``device``."""
        n = torch.full((), float(num_pos), device=device)  # no host copy: no CUDA sync
        if self._reduce_num_pos is not None:
            n = self._reduce_num_pos(n)
        return n.clamp(min=1.0)

    @abc.abstractmethod
    def compute(
        self,
        raw: torch.Tensor,
        targets: torch.Tensor,
        priors: torch.Tensor,
        feature_sizes: list[tuple[int, int]],
    ) -> tuple[torch.Tensor, Parts]:
        """The loss of ``raw`` against ``targets``: ``(total, {box, obj, cls})`` (see ``__call__``)."""

    @abc.abstractmethod
    def initial_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """The raw output ``[B, N, 5 + C]`` of an ideally initialised head of ``raw``'s shape."""

    def __call__(
        self,
        raw: torch.Tensor,
        targets: torch.Tensor,
        priors: torch.Tensor,
        feature_sizes: list[tuple[int, int]] | None = None,
    ) -> tuple[torch.Tensor, Parts]:
        feature_sizes = feature_sizes or []
        total, parts = self.compute(raw, targets, priors, feature_sizes)
        if self.check_init and self.initial_check is None:
            with torch.no_grad():
                ideal = self.initial_raw(raw.detach().float())
                _, expected = self.compute(ideal, targets, priors, feature_sizes)
            self.initial_check = compare_initial_losses(parts, expected, self.tolerance)
        return total, parts

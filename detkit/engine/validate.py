"""Validation during training: COCO metrics of the EMA weights, and their loss, in one pass.

The metrics come from :func:`detkit.eval.evaluate` through a :class:`detkit.Detector`, the path
users get. The validation loss is taken from the same forward pass: a forward hook on the model
hands each raw output, with the targets of the batch being evaluated, to the criterion.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from detkit.engine.state import LOSS_PARTS


class LossTap:
    """Iterate a loader for ``evaluate`` while summing the loss of the model's outputs.

    Args:
        loader: yields :class:`detkit.data.Batch` (targets xyxy input px).
        model: the module the detector calls (raw ``[B, N, 5 + C]`` out), with ``priors`` and
            ``feature_sizes``.
        criterion: ``(raw, targets, priors, feature_sizes) -> (total, parts)``.
    """

    def __init__(self, loader: Any, model: nn.Module, criterion: Any) -> None:
        self.loader, self.model, self.criterion = loader, model, criterion
        self.sums = dict.fromkeys(LOSS_PARTS, 0.0)
        self.batches = 0
        self._targets: torch.Tensor | None = None

    def __len__(self) -> int:
        """Batches in the loader (for progress bars)."""
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        handle = self.model.register_forward_hook(self._hook)
        try:
            for batch in self.loader:
                self._targets = batch.targets
                yield batch
        finally:
            handle.remove()
            self._targets = None

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], raw: torch.Tensor) -> None:
        if self._targets is None:  # a forward that is not one of the loader's batches
            return
        h, w = inputs[0].shape[2:]
        priors = module.priors(h, w, device=raw.device)
        targets = self._targets.to(raw.device)
        _, parts = self.criterion(raw, targets, priors, module.feature_sizes(h, w))
        self.sums = {k: self.sums[k] + parts[k] for k in LOSS_PARTS}
        self.batches += 1
        self._targets = None  # one loss per batch

    def means(self) -> dict[str, float]:
        """``val_box``, ``val_obj``, ``val_cls``: mean loss parts per batch."""
        return {f"val_{k}": v / max(self.batches, 1) for k, v in self.sums.items()}

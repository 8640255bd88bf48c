"""Validation during training: COCO metrics of the EMA weights, and their loss, in one pass;
and the detailed evaluation of ``best.pt`` when a run ends.

The metrics come from :mod:`detkit.eval.runner` through a :class:`detkit.Detector`, the path
users get. The validation loss is taken from the same forward pass: a forward hook on the model
hands each raw output, with the targets of the batch being evaluated, to the criterion.

Under DDP every rank predicts its share of the split (see
:func:`detkit.engine.feed.train_val_loaders`); the predictions are gathered to rank 0, put
back in the split's order and scored there by pycocotools, so the mAP is exactly that of one
process predicting the whole split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from detkit.engine import distributed as ddp
from detkit.engine.state import LOSS_PARTS
from detkit.eval.runner import EvalResult, merge_shards, predict_split, score_predictions
from detkit.losses.parts import parts_tensor


def validate_split(
    detector: Any, loader: Any, criterion: Any, ann_file: Any, ctx: ddp.DistContext,
    device: torch.device, progress: bool = False, stop: Callable[[], bool] | None = None,
) -> dict[str, float] | None:  # fmt: skip
    """COCO metrics (:data:`detkit.eval.STAT_NAMES`), ``precision`` and ``recall`` (at the
    F1-optimal threshold, :meth:`detkit.eval.EvalResult.operating_point`) and mean loss parts
    (``val_box`` ...) of ``detector`` on a split, every rank predicting its share of it (every
    rank must call).

    Args:
        detector: a :class:`detkit.Detector` over the model to validate.
        loader: this rank's share of the split (:class:`detkit.data.Batch`, letterboxed).
        criterion: the training criterion, for the validation loss.
        ann_file: the split's ground truth (COCO json path or dict).
        ctx, device: the rank context and its device (for the collectives).
        progress: show a progress bar (rank 0).
        stop: asked before each batch; True (the same on every rank) ends the pass.

    Returns:
        The metrics on rank 0; ``{}`` on the other ranks; None on every rank when ``stop``
        ended the pass. The loss is the mean per batch over every rank's batches (a share
        padded by wrapping around counts its repeats).
    """
    tap = LossTap(loader, detector.model, criterion, stop)
    start = time.perf_counter()
    preds = predict_split(detector, tap, progress=progress and ctx.is_main)
    if tap.stopped:
        return None
    seconds = time.perf_counter() - start
    sums = tap.sums.tolist() if torch.is_tensor(tap.sums) else [0.0] * len(LOSS_PARTS)
    *sums, batches = ddp.sum_over_ranks([*sums, tap.batches], ctx, device)
    shards = ddp.gather_to_main(preds, ctx)
    if shards is None:
        return {}
    result = score_predictions(merge_shards(shards), detector, ann_file, seconds)
    losses = {f"val_{k}": v / max(batches, 1) for k, v in zip(LOSS_PARTS, sums, strict=True)}
    return result.stats | result.operating_point() | losses


def evaluate_split(
    detector: Any, loader: Any, ann_file: Any, ctx: ddp.DistContext, progress: bool = False,
    stop: Callable[[], bool] | None = None, **scoring: Any,
) -> EvalResult | None:  # fmt: skip
    """The detailed evaluation (VOC AP, confusion matrix, error breakdown, thresholds) of
    ``detector`` on a split, every rank predicting its share as in :func:`validate_split`
    (every rank must call); no loss.

    Args:
        stop: asked before each batch; True (the same on every rank) ends the pass.
        scoring: ``cm_conf``, ``cm_iou``, ``error_ious`` (see
            :func:`detkit.eval.runner.score_predictions`).

    Returns:
        The :class:`detkit.eval.EvalResult` on rank 0; None on the other ranks, and on every
        rank when ``stop`` ended the pass.
    """
    batches = Stoppable(loader, stop)
    start = time.perf_counter()
    preds = predict_split(detector, batches, progress=progress and ctx.is_main)
    if batches.stopped:
        return None
    seconds = time.perf_counter() - start
    shards = ddp.gather_to_main(preds, ctx)
    if shards is None:
        return None
    merged = merge_shards(shards)
    return score_predictions(merged, detector, ann_file, seconds, detailed=True, **scoring)


class Stoppable:
    """A loader's batches until ``stop()`` says True (asked before each batch, the same on
    every rank); ``stopped`` then tells that the pass ended early.

    Args:
        loader: yields :class:`detkit.data.Batch`.
        stop: asked before each batch (None: never stops).
    """

    def __init__(self, loader: Any, stop: Callable[[], bool] | None = None) -> None:
        self.loader, self.stop, self.stopped = loader, stop, False

    def __len__(self) -> int:
        """Batches in the loader (for progress bars)."""
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if self.stop is not None and self.stop():
                self.stopped = True
                return
            yield batch


class LossTap(Stoppable):
    """Iterate a loader for ``evaluate`` while summing the loss of the model's outputs.

    Args:
        loader: yields :class:`detkit.data.Batch` (targets xyxy input px).
        model: the module the detector calls (raw ``[B, N, 5 + C]`` out), with ``priors`` and
            ``feature_sizes``.
        criterion: ``(raw, targets, priors, feature_sizes) -> (total, parts)``.
        stop: asked before each batch; True ends the pass early (``stopped`` is then set).
    """

    def __init__(
        self, loader: Any, model: nn.Module, criterion: Any,
        stop: Callable[[], bool] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(loader, stop)
        self.model, self.criterion = model, criterion
        self.sums: torch.Tensor | float = 0.0  # [3] loss parts summed on the device
        self.batches = 0
        self._targets: torch.Tensor | None = None

    def __iter__(self) -> Iterator[Any]:
        handle = self.model.register_forward_hook(self._hook)
        try:
            for batch in super().__iter__():
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
        self.sums = self.sums + parts_tensor(parts, raw.device).double()
        self.batches += 1
        self._targets = None  # one loss per batch

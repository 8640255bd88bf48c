"""Validation during training (COCO metrics and loss, one forward per batch) and the detailed
evaluation of ``best.pt``. Under DDP every rank predicts its share, rank 0 scores them all."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from detkit.core.logs import progress as progress_bar
from detkit.data import images_to_float
from detkit.data.loader import Batch, Loader
from detkit.engine import distributed as ddp
from detkit.engine.device import autocast
from detkit.eval.runner import (
    EvalResult,
    Predictions,
    keep_predictions,
    merge_shards,
    predict_split,
    score_predictions,
)
from detkit.inference.postprocess import detect
from detkit.inference.predict import Detector
from detkit.models.losses.base import PARTS, Criterion

GroundTruth = Path | dict
"""A split's COCO ground truth: a json path or the loaded dict."""


def validate_split(
    detector: Detector, criterion: Criterion, loader: Loader, ann_file: GroundTruth,
    ctx: ddp.DistContext, progress: bool = False, stop: Callable[[], bool] | None = None,
) -> dict[str, float] | None:  # fmt: skip
    """COCO metrics (:data:`detkit.eval.STAT_NAMES`), ``precision`` and ``recall`` (at the
    F1-optimal threshold) and mean loss parts (``val_box`` ...) of ``detector`` on this rank's
    share ``loader`` (a collective; ``stop`` is asked before each batch, the same on every rank):
    on rank 0; ``{}`` on the others; None on every rank when ``stop`` ended the pass."""
    model, device, preds = detector.model, detector.device, {}
    sums, count = torch.zeros(len(PARTS), dtype=torch.float64, device=device), 0
    batches, start = Stoppable(loader, stop), time.perf_counter()
    bar = progress_bar(batches, desc="val", leave=False, disable=not (progress and ctx.is_main), unit="batch")  # fmt: skip
    with torch.inference_mode():
        for batch in bar:
            images = images_to_float(batch.images.to(device, non_blocking=True))
            h, w = images.shape[2:]
            priors = detector.priors(h, w)
            with autocast(device, detector.amp):
                raw = model(images)
            targets = batch.targets.to(device, non_blocking=True)
            sums += criterion(raw, targets, priors, model.feature_sizes(h, w)).double()
            count += 1
            found = detect(model, images, priors, detector.conf, detector.iou, detector.max_det,
                           infos=batch.infos, raw=raw)  # fmt: skip
            keep_predictions(preds, batch.image_ids, found)
    if batches.stopped:
        return None
    seconds = time.perf_counter() - start
    *sums, count = ddp.sum_over_ranks([*sums.tolist(), count], ctx, device)
    result = _score(preds, detector, ann_file, ctx, seconds)
    if result is None:
        return {}
    losses = {f"val_{k}": v / max(count, 1) for k, v in zip(PARTS, sums, strict=True)}
    return result.stats | result.operating_point() | losses


def evaluate_split(
    detector: Detector, loader: Loader, ann_file: GroundTruth, ctx: ddp.DistContext,
    progress: bool = False, stop: Callable[[], bool] | None = None, **scoring: object,
) -> EvalResult | None:  # fmt: skip
    """The detailed evaluation (VOC AP, confusion, errors, thresholds) of ``detector``, sharded
    as :func:`validate_split`; ``scoring``: :func:`detkit.eval.runner.score_predictions`'s
    options. The :class:`detkit.eval.EvalResult` on rank 0, None on the others and on every
    rank when ``stop`` ended the pass."""
    batches, start = Stoppable(loader, stop), time.perf_counter()
    preds = predict_split(detector, batches, progress=progress and ctx.is_main)
    if batches.stopped:
        return None
    return _score(preds, detector, ann_file, ctx, time.perf_counter() - start, detailed=True,
                  **scoring)  # fmt: skip


def _score(
    preds: Predictions, detector: Detector, ann_file: GroundTruth, ctx: ddp.DistContext,
    seconds: float, **options: object,
) -> EvalResult | None:  # fmt: skip
    """Every rank's predictions gathered and scored on rank 0 (None on the other ranks)."""
    shards = ddp.gather_to_main(preds, ctx)
    if shards is None:
        return None
    return score_predictions(merge_shards(shards), detector, ann_file, seconds, **options)


class Stoppable:
    """A loader's batches until ``stop()`` (asked before each batch) says True: ``stopped``."""

    def __init__(self, loader: Loader, stop: Callable[[], bool] | None = None) -> None:
        self.loader, self.stop, self.stopped = loader, stop, False

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            if self.stop is not None and self.stop():
                self.stopped = True
                return
            yield batch

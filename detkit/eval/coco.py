"""COCO box metrics: detections -> a COCO results list -> pycocotools' 12 numbers.

The results list is in the dataset's own terms (category ids mapped back, boxes xywh in
original-image px), so it can be saved and rescored by any other tool.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader
from tqdm import tqdm

log = logging.getLogger(__name__)

STAT_NAMES = (
    "mAP50-95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


@dataclass
class EvalResult:
    """Metrics of one evaluation.

    Attributes:
        stats: the 12 COCO numbers by :data:`STAT_NAMES` (pycocotools' -1 for "no such objects").
        results: COCO results entries (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).
        summary: pycocotools' printed table.
        images_per_s: throughput of model + post-processing.
    """

    stats: dict[str, float]
    results: list[dict[str, Any]]
    summary: str
    images_per_s: float


def coco_metrics(
    ann_file: str | Path, results: list[dict[str, Any]]
) -> tuple[dict[str, float], str]:
    """Score COCO results against a COCO annotation file with pycocotools.

    Args:
        ann_file: ground truth in COCO JSON.
        results: entries with ``image_id``, ``category_id``, ``bbox`` (xywh px) and ``score``.

    Returns:
        ``(stats, summary)``: the 12 numbers by name and the printed table. With no detections
        at all (pycocotools would raise) every number is 0 and the summary says why.

    Raises:
        ValueError: a score is NaN or infinite.
    """
    if any(not math.isfinite(r["score"]) for r in results):
        raise ValueError("detection scores must be finite; got NaN or inf")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0), "no detections: every metric is 0"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(STAT_NAMES, map(float, ev.stats), strict=True)), out.getvalue()


def evaluate(
    detector: Any, loader: DataLoader, ann_file: str | Path, progress: bool = True
) -> EvalResult:
    """Run ``detector`` over ``loader`` and score it with pycocotools.

    Args:
        detector: a :class:`detkit.Detector` (its ``conf`` should be low, e.g. 0.001, for mAP;
            its ``cat_ids`` map labels back to the dataset's category ids).
        loader: yields :class:`detkit.data.Batch` of the evaluation split, letterboxed.
        ann_file: that split's COCO annotation file.
        progress: show a progress bar.
    """
    results: list[dict[str, Any]] = []
    seen, start = 0, time.perf_counter()
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress, unit="batch"):
        dets = detector.detect_batch(batch.images, batch.infos)
        for image_id, det in zip(batch.image_ids, dets, strict=True):
            results.extend(det.to_coco(image_id, detector.cat_ids))
        seen += len(dets)
    speed = seen / max(time.perf_counter() - start, 1e-9)
    stats, summary = coco_metrics(ann_file, results)
    return EvalResult(stats=stats, results=results, summary=summary, images_per_s=speed)

"""COCO box metrics: detections -> a COCO results list -> pycocotools' 12 numbers.

The results list is in the dataset's own terms (category ids mapped back, boxes xywh in
original-image px), so it can be saved and rescored by any other tool.

pycocotools has traps that silently change the numbers; :func:`load_coco_gt` avoids them on a
copy of the ground truth (the user's file is never written):

- annotation ids that start at 0 (or are missing or repeated): ``COCOeval`` stores the matched
  ground-truth *id* per detection and treats 0 as "unmatched", so a true positive on annotation
  0 becomes a false positive. Ids are renumbered ``1..N``;
- missing ``area`` (``COCOeval`` raises, or cannot bin small/medium/large): filled with the box
  area ``w * h``, the convention for box-only datasets;
- missing ``iscrowd``: filled with 0.

:func:`coco_evaluate` also refuses NaN/inf scores and boxes, reports mAP 0 with a message when
there are no detections at all (``loadRes`` would raise), and never mutates the results list it
is given (``loadRes`` writes ``id``, ``area`` and ``segmentation`` into each entry).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.data.groundtruth import read_coco_json, repair_annotations
from detkit.eval.voc import ImageGT
from detkit.ops.convert import box_convert

log = logging.getLogger(__name__)

STAT_NAMES = (
    "mAP50-95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


@dataclass
class CocoScores:
    """pycocotools' numbers for one results list.

    Attributes:
        stats: the 12 COCO numbers by :data:`STAT_NAMES` (pycocotools' -1 for "no such objects").
        summary: pycocotools' printed table, or a one-line reason when nothing was scored.
        per_class: category id -> ``{"AP50-95", "AP50"}`` (area all, 100 detections per image;
            ``NaN`` for a category without ground truth).
        fixes: what :func:`load_coco_gt` repaired in the ground-truth copy.
        cocoeval: the evaluated and accumulated ``COCOeval`` (None without detections): its
            per-image matching is what :func:`detkit.eval.errors.error_breakdown` classifies.
        pr50: category id -> ``[101]`` pycocotools' interpolated precision at recall 0, 0.01,
            ..., 1 at IoU >= 0.5 (area all, 100 detections per image); its mean is the
            category's AP50. Only categories with ground truth.
    """

    stats: dict[str, float]
    summary: str
    per_class: dict[int, dict[str, float]]
    fixes: list[str]
    cocoeval: COCOeval | None = field(default=None, repr=False)
    pr50: dict[int, np.ndarray] = field(default_factory=dict, repr=False)


# (ground truth, repair) pairs logged in this process: each is said once, however often the
# same file is scored (the returned ``fixes`` still list every repair, every time)
_REPORTED: set[tuple[str, str]] = set()


def load_coco_gt(gt: str | Path | dict[str, Any]) -> tuple[COCO, list[str]]:
    """Read COCO ground truth into a ``COCO`` object, repairing the traps on a copy.

    Each repair of a file is logged once per process (a training run scores its validation
    file every epoch); ``fixes`` lists them at every call.

    Args:
        gt: a COCO instances json path, or a COCO dict (e.g.
            :func:`detkit.data.groundtruth.ground_truth`); neither is modified.

    Returns:
        ``(coco, fixes)``: the indexed ground truth and a list of what was repaired.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file or dict is not a COCO document (malformed JSON naming the line,
            not an object, no ``images`` list).
    """
    if isinstance(gt, dict):
        name, dataset = "the ground truth", copy.deepcopy(gt)
    else:
        name, dataset = str(gt), read_coco_json(gt)
    if "images" not in dataset:
        raise ValueError(f"{name} is not a COCO json (no 'images' list)")
    fixes = repair_annotations(dataset.setdefault("annotations", []))
    for fix in fixes:
        if (name, fix) not in _REPORTED:  # a training run scores the same file every epoch
            _REPORTED.add((name, fix))
            log.info("%s: %s (in memory; the original is unchanged)", name, fix)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, fixes


def _check_results(gt: COCO, results: list[dict[str, Any]]) -> None:
    """Refuse results pycocotools would score wrongly or reject with a bare assertion."""
    for r in results:
        if not math.isfinite(r["score"]) or not all(math.isfinite(v) for v in r["bbox"]):
            raise ValueError(f"detection scores and boxes must be finite; got NaN or inf in {r}")
    unknown = {r["image_id"] for r in results} - set(gt.getImgIds())
    if unknown:
        raise ValueError(
            f"results name {len(unknown)} image id(s) not in the ground truth, e.g. "
            f"{sorted(unknown, key=str)[:5]}"
        )
    stray = {r["category_id"] for r in results} - set(gt.getCatIds())
    if stray:
        log.warning("results name category ids %s not in the ground truth (ignored)", stray)


def _per_class(ev: COCOeval) -> dict[int, dict[str, float]]:
    """AP50-95 and AP50 per category from ``ev.eval['precision']`` ``[T, R, K, A, M]``."""
    precision = ev.eval["precision"][:, :, :, 0, -1]  # area "all", the largest maxDets
    out = {}
    for k, cat in enumerate(ev.params.catIds):
        p, p50 = precision[:, :, k], precision[0, :, k]
        out[int(cat)] = {
            "AP50-95": float(p[p > -1].mean()) if (p > -1).any() else math.nan,
            "AP50": float(p50[p50 > -1].mean()) if (p50 > -1).any() else math.nan,
        }
    return out


def _pr50(ev: COCOeval) -> dict[int, np.ndarray]:
    """Per category with ground truth, the ``[101]`` precision at IoU 0.5 (area all, the largest
    maxDets) from ``ev.eval['precision']`` ``[T, R, K, A, M]``; pycocotools' -1 marks none."""
    precision = ev.eval["precision"][0, :, :, 0, -1]
    return {
        int(cat): precision[:, k].astype(np.float64)
        for k, cat in enumerate(ev.params.catIds)
        if (precision[:, k] > -1).all()
    }


def coco_evaluate(
    gt: str | Path | dict[str, Any] | COCO, results: list[dict[str, Any]]
) -> CocoScores:
    """Score COCO results with pycocotools, with the traps handled.

    Args:
        gt: ground truth: a COCO json path or dict (read with :func:`load_coco_gt`) or a
            ``COCO``.
        results: entries with ``image_id``, ``category_id`` (the dataset's ids), ``bbox``
            (xywh top-left, orig px) and ``score``; not modified.

    Returns:
        :class:`CocoScores`. With no detections at all every number is 0 and the summary says so.

    Raises:
        ValueError: a score or box is NaN/inf, or an image id is not in the ground truth.
    """
    coco, fixes = (gt, []) if isinstance(gt, COCO) else load_coco_gt(gt)
    _check_results(coco, results)
    if not results:
        per_class = {int(c): {"AP50-95": 0.0, "AP50": 0.0} for c in coco.getCatIds()}
        summary = "no detections: every metric is 0 (pycocotools cannot score an empty list)"
        pr50 = {c: np.zeros(101) for c, n in objects_per_category(coco).items() if n}
        return CocoScores(dict.fromkeys(STAT_NAMES, 0.0), summary, per_class, fixes, None, pr50)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        dt = coco.loadRes(copy.deepcopy(results))  # loadRes writes into each entry
        ev = COCOeval(coco, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = dict(zip(STAT_NAMES, map(float, ev.stats), strict=True))
    summary = "\n".join(s for s in out.getvalue().splitlines() if s.lstrip().startswith("Average"))
    return CocoScores(stats, summary, _per_class(ev), fixes, ev, _pr50(ev))


def matches_at(ev: COCOeval, iou: float = 0.5) -> np.ndarray:
    """Each results entry's outcome in pycocotools' matching at one IoU (area "all").

    Args:
        ev: a ``COCOeval`` after ``evaluate()`` (``CocoScores.cocoeval``); results entry ``k``
            is its detection id ``k + 1``.
        iou: one of ``ev.params.iouThrs``.

    Returns:
        ``[N]`` int8: 1 true positive, 0 false positive, -1 not scored (beyond the 100 per
        image and class, or on a crowd box).
    """
    thrs = [round(float(t), 4) for t in ev.params.iouThrs]
    if round(iou, 4) not in thrs:
        raise ValueError(f"IoU {iou} is not one of the evaluation's thresholds {thrs}")
    ti = thrs.index(round(iou, 4))
    out = np.full(len(ev.cocoDt.anns), -1, dtype=np.int8)
    n_img, n_area = len(ev.params.imgIds), len(ev.params.areaRng)
    for k in range(len(ev.params.catIds)):
        for e in ev.evalImgs[k * n_area * n_img : (k * n_area + 1) * n_img]:
            if e is None:
                continue
            ids = np.asarray(e["dtIds"], dtype=np.int64) - 1
            scored = ~e["dtIgnore"][ti].astype(bool)
            out[ids[scored]] = (e["dtMatches"][ti][scored] > 0).astype(np.int8)
    return out


def objects_per_category(coco: COCO) -> dict[int, int]:
    """Non-crowd annotations per category id (the objects recall divides by)."""
    counts = dict.fromkeys((int(c) for c in coco.getCatIds()), 0)
    for a in coco.anns.values():
        if not a.get("iscrowd", 0) and a["category_id"] in counts:
            counts[a["category_id"]] += 1
    return counts


def ground_truth_by_image(coco: COCO, cat_ids: list[int] | None) -> dict[int, ImageGT]:
    """Every image's boxes in detkit's terms, for the VOC metrics and the confusion matrix.

    Args:
        coco: ground truth (e.g. from :func:`load_coco_gt`).
        cat_ids: contiguous label -> category id (identity when None). Annotations of other
            categories are left out.

    Returns:
        image id -> ``(boxes [G, 4] float64 xyxy orig px, labels [G] int64, ignore [G] bool)``,
        ``ignore`` being ``iscrowd``.
    """
    to_label = {c: i for i, c in enumerate(cat_ids)} if cat_ids is not None else None
    out: dict[int, ImageGT] = {}
    for image_id in coco.getImgIds():
        anns = coco.imgToAnns.get(image_id, [])
        if to_label is not None:
            anns = [a for a in anns if a["category_id"] in to_label]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = box_convert(xywh, "xywh", "xyxy")
        cats = [a["category_id"] for a in anns]
        labels = np.array(
            [to_label[c] for c in cats] if to_label is not None else cats, dtype=np.int64
        )
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        out[int(image_id)] = (boxes, labels, crowd)
    return out

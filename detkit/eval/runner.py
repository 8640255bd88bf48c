"""Run a detector over a dataset split (``Detector.detect_batch``, the inference path) and
score it: COCO (pycocotools), VOC, confusion matrix, error breakdown, thresholds."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from detkit.boxes.coords import box_convert
from detkit.core.deploy import CM_CONF, CM_IOU
from detkit.core.io import json_float
from detkit.core.logs import ensure_handler
from detkit.core.logs import progress as progress_bar
from detkit.eval.coco import DetTable, coco_evaluate, ground_truth_by_image, load_coco_gt
from detkit.eval.confusion import confusion_matrix
from detkit.eval.errors import ErrorBreakdown, error_breakdown
from detkit.eval.thresholds import ThresholdReport, thresholds_from_eval
from detkit.eval.voc import ImageDets, VOCResult, voc_evaluate

if TYPE_CHECKING:
    import torch

    from detkit.data.types import LetterboxInfo
    from detkit.inference.detections import Detections
    from detkit.inference.postprocess import Result

log = logging.getLogger(__name__)

# eval.errors -> the error breakdown's IoUs (counts at the first; cost: BENCHMARKS.md)
ERROR_IOUS = {"0.5": (0.5,), "0.5:0.95": tuple(0.5 + i / 20 for i in range(10)), "off": ()}
# default eval.errors_limit: above it the breakdown (and the worst-images gallery) is skipped,
# as it needs the whole COCOeval in memory and pycocotools' Python matching
ERRORS_LIMIT = 200_000


class BatchDetector(Protocol):
    """What the evaluator runs (:class:`detkit.inference.predict.Detector`, a layer above)."""

    class_names: list[str]
    cat_ids: list[int] | None

    def detect_batch(
        self, images: torch.Tensor, infos: Sequence[LetterboxInfo]
    ) -> list[Detections]:
        """``[B, 3, S, S]`` letterboxed images -> each image's detections (xyxy original px)."""


def error_ious(setting: str) -> tuple[float, ...]:
    """The IoUs of an ``eval.errors`` setting; ``ValueError`` for an unknown one."""
    if setting not in ERROR_IOUS:
        raise ValueError(f"eval.errors must be one of {sorted(ERROR_IOUS)}, got {setting!r}")
    return ERROR_IOUS[setting]


@dataclass
class EvalResult:
    """Metrics of one evaluation: COCO ``stats`` by :data:`detkit.eval.STAT_NAMES`, every
    detection scored (the dataset's category ids, xywh orig px), end-to-end ``images_per_s``,
    ``cat_ids`` label -> category id (None: identity), ``per_class`` category id -> ``{"AP50-95",
    "AP50"}``; ``voc``, ``confusion`` (``[C + 1, C + 1]`` ``matrix[predicted, true]``, background
    last) and ``errors`` in detailed runs only, ``errors_skipped`` saying why not ("" when off);
    ``thresholds``: P / R / F1 against the score threshold (None without detections)."""

    stats: dict[str, float]
    detections: DetTable
    summary: str
    images_per_s: float
    num_images: int = 0
    class_names: list[str] = field(default_factory=list)
    cat_ids: list[int] | None = None
    per_class: dict[int, dict[str, float]] = field(default_factory=dict)
    pr50: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    voc: VOCResult | None = None
    confusion: np.ndarray | None = None
    confusion_conf: float = CM_CONF
    confusion_iou: float = CM_IOU
    gt_fixes: list[str] = field(default_factory=list)
    errors: ErrorBreakdown | None = None
    thresholds: ThresholdReport | None = None
    coco_gt: COCO | None = field(default=None, repr=False)
    eval_seconds: float = 0.0
    errors_skipped: str = ""
    _results: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def results(self) -> list[dict[str, Any]]:
        """The detections as COCO results entries, built on first use."""
        if self._results is None:
            self._results = self.detections.entries()
        return self._results

    def to_dict(self) -> dict[str, Any]:
        """Every number as plain JSON data (``NaN`` as ``None``); COCO's 12 at the top level."""
        out: dict[str, Any] = {
            **{k: json_float(v) for k, v in self.stats.items()},  # the 12 COCO numbers
            "num_images": self.num_images,
            "images_per_s": self.images_per_s,
            "per_class": self.class_rows(),
            "gt_fixes": self.gt_fixes,
            "eval_seconds": round(self.eval_seconds, 3),
        }
        if self.errors is not None:
            out["errors"] = self.errors.to_dict(self.class_names, self.cat_ids)
        elif self.errors_skipped:
            out["errors"] = {"skipped": self.errors_skipped}
        if self.thresholds is not None:
            out["thresholds"] = self.thresholds.to_dict()
        if self.voc is not None:
            out["voc"] = {
                "mAP50": json_float(self.voc.map),
                "mAP50_voc07": json_float(self.voc.map07),
            }
        if self.confusion is not None:
            out["confusion_matrix"] = {
                "rows": "predicted",
                "columns": "true",
                "labels": [*self.class_names, "background"],
                "score_threshold": self.confusion_conf,
                "iou_threshold": self.confusion_iou,
                "counts": self.confusion.tolist(),
            }
        return out

    def operating_point(self) -> dict[str, float]:
        """``precision`` and ``recall`` at the F1-optimal score threshold, IoU 0.5, all classes
        pooled (``NaN`` without detections or objects): training's per-epoch P and R."""
        best = self.thresholds.best.get("all") if self.thresholds is not None else None
        p, r = (best.precision, best.recall) if best is not None else (math.nan, math.nan)
        return {"precision": float(p), "recall": float(r)}

    def label_cat_ids(self) -> list[int]:
        """The dataset's category id of each label (``cat_ids``, or the label itself)."""
        return list(self.cat_ids if self.cat_ids is not None else range(len(self.class_names)))

    def class_rows(self) -> list[dict[str, Any]]:
        """One dict per class: name, category id, #ground truth, COCO and VOC APs."""
        rows, cats = [], self.label_cat_ids()
        for label, name in enumerate(self.class_names):
            cat = cats[label]
            coco = self.per_class.get(cat, {})
            row = {
                "label": label,
                "name": name,
                "category_id": int(cat),
                "AP50-95": json_float(coco.get("AP50-95", math.nan)),
                "AP50": json_float(coco.get("AP50", math.nan)),
            }
            if self.voc is not None:
                row["num_gt"] = int(self.voc.num_gt[label])
                row["AP50_voc"] = json_float(self.voc.ap[label])
                row["AP50_voc07"] = json_float(self.voc.ap07[label])
            rows.append(row)
        return rows

    def pr50_by_label(self) -> list[np.ndarray | None]:
        """:attr:`pr50` by contiguous label (None for a class without ground truth)."""
        return [self.pr50.get(int(cat)) for cat in self.label_cat_ids()]

    def table(self) -> str:
        cols = ["AP50-95", "AP50", "AP50_voc", "AP50_voc07"] if self.voc else ["AP50-95", "AP50"]
        width = max([len("class"), *map(len, self.class_names)]) + 2
        head = f"{'class':<{width}}" + ("   #gt" if self.voc else "")
        lines = [head + "".join(f"{c:>12}" for c in cols)]
        for row in self.class_rows():
            line = f"{row['name']:<{width}}" + (f"{row['num_gt']:>6}" if self.voc else "")
            line += "".join(
                f"{row[c]:>12.4f}" if row[c] is not None else f"{'-':>12}" for c in cols
            )
            lines.append(line)
        return "\n".join(lines)


Predictions = dict[int, ImageDets]
"""Image id -> its float32 boxes and scores, int64 labels, in the order the loader gave them."""

Sink = Callable[[int, ImageDets], None]
"""Receives each image's detections as soon as they are made (e.g. :class:`JsonlSink`)."""


def predict_split(
    detector: BatchDetector, loader: DataLoader, progress: bool = True, sink: Sink | None = None
) -> Predictions:
    """The :data:`Predictions` of ``detector`` on every image of ``loader`` (a split or a
    rank's share, letterboxed), in loader order, each also handed to ``sink`` once."""
    preds: Predictions = {}
    bar = progress_bar(loader, desc="eval", leave=False, disable=not progress, unit="batch")
    for batch in bar:
        found = detector.detect_batch(batch.images, batch.infos)
        keep_predictions(preds, batch.image_ids, found, sink)
    return preds


def keep_predictions(
    preds: Predictions,
    image_ids: Sequence[int],
    found: Sequence[Detections | Result],
    sink: Sink | None = None,
) -> None:
    """Add each image's detections (``boxes`` xyxy orig px, ``scores``, ``labels`` tensors) to
    ``preds`` as arrays and hand them to ``sink``; a padded repeat keeps its first entry."""
    for image_id, d in zip(image_ids, found, strict=True):
        if int(image_id) in preds:
            continue
        preds[int(image_id)] = (d.boxes.detach().float().cpu().numpy(),
                                d.scores.detach().float().cpu().numpy(),
                                d.labels.detach().long().cpu().numpy())  # fmt: skip
        if sink is not None:
            sink(int(image_id), preds[int(image_id)])


def detection_table(preds: Predictions, cat_ids: list[int] | None) -> DetTable:
    """The COCO results of :data:`Predictions` as arrays, in order: ``bbox`` xywh orig px rounded
    to 0.001 px, ``score`` to 1e-5 (as :meth:`detkit.Detections.to_coco`), labels via ``cat_ids``."""
    items = list(preds.items())
    counts = [len(d[1]) for _, d in items]
    boxes = np.concatenate([d[0] for _, d in items] or [np.zeros((0, 4), np.float32)])
    scores = np.concatenate([d[1] for _, d in items] or [np.zeros(0, np.float32)])
    labels = np.concatenate([d[2] for _, d in items] or [np.zeros(0, np.int64)])
    cats = np.asarray(cat_ids, np.int64)[labels] if cat_ids is not None else labels
    xywh = box_convert(boxes.reshape(-1, 4), "xyxy", "xywh").astype(np.float64)
    return DetTable(
        np.repeat(np.array([i for i, _ in items], dtype=np.int64), counts),
        cats.astype(np.int64),
        np.round(xywh, 3),
        np.round(scores.astype(np.float64), 5),
    )


class JsonlSink:
    """Writes each image's detections to ``path`` (replaced) as they are made: one COCO results
    entry a line, flushed per image, so an evaluation that dies keeps what it predicted."""

    def __init__(self, path: str | Path, cat_ids: list[int] | None) -> None:
        self.path, self.cat_ids = Path(path), cat_ids
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def __call__(self, image_id: int, dets: ImageDets) -> None:
        table = detection_table({image_id: dets}, self.cat_ids)
        self._file.write("".join(json.dumps(e) + "\n" for e in table.entries()))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def merge_shards(shards: list[Predictions]) -> Predictions:
    """One split's predictions from its ranks' shares (rank ``r`` of ``W`` predicts images ``r,
    r + W, ...``, padded by wrapping around) in the single-process order; a padded repeat keeps
    its first entry.

    Example:
        >>> merge_shards([{1: "a", 3: "c"}, {2: "b", 1: "a"}])
        {1: 'a', 2: 'b', 3: 'c'}
    """
    merged: Predictions = {}
    rows = [list(shard.items()) for shard in shards]
    for i in range(max(map(len, rows), default=0)):
        for row in rows:
            if i < len(row):
                merged.setdefault(*row[i])
    return merged


def evaluate_detector(
    detector: BatchDetector,
    loader: DataLoader,
    ann_file: str | Path | dict[str, Any],
    progress: bool = True,
    detailed: bool = False,
    cm_conf: float = CM_CONF,
    cm_iou: float = CM_IOU,
    error_ious: tuple[float, ...] = (0.5,),
    errors_limit: int = ERRORS_LIMIT,
    sink: Sink | None = None,
) -> EvalResult:
    """Run ``detector`` (a :class:`detkit.Detector` at a low ``conf``, 0.001, for mAP) over
    ``loader`` (the split, letterboxed) and score it against ``ann_file`` (its COCO json path or
    dict, never written): :func:`predict_split`, then :func:`score_predictions`. ``detailed``
    adds VOC AP, the confusion matrix (at ``cm_conf``, ``cm_iou``) and the error breakdown at
    ``error_ious`` (empty: none; skipped above ``errors_limit`` detections, 0: no limit);
    ``sink`` receives each image's detections as they are made (:class:`JsonlSink`)."""
    ensure_handler(quiet=not progress)
    start = time.perf_counter()
    preds = predict_split(detector, loader, progress, sink)
    return score_predictions(
        preds, detector, ann_file, time.perf_counter() - start, detailed=detailed,
        cm_conf=cm_conf, cm_iou=cm_iou, error_ious=error_ious, errors_limit=errors_limit,
    )  # fmt: skip


def score_predictions(
    preds: Predictions,
    detector: BatchDetector,
    ann_file: str | Path | dict[str, Any],
    predict_seconds: float,
    detailed: bool = False,
    cm_conf: float = CM_CONF,
    cm_iou: float = CM_IOU,
    error_ious: tuple[float, ...] = (0.5,),
    errors_limit: int = ERRORS_LIMIT,
) -> EvalResult:
    """Score :data:`Predictions` against the split's ground truth (see :func:`evaluate_detector` for
    the arguments); ``predict_seconds``: the time predicting took (for ``images_per_s``). Memory
    stays bounded (chunked matching) unless the error breakdown runs."""
    start = time.perf_counter() - predict_seconds
    table = detection_table(preds, detector.cat_ids)
    speed = len(preds) / max(predict_seconds, 1e-9)
    skipped = ""
    if detailed and error_ious and 0 < errors_limit < len(table):
        skipped = (
            f"{len(table)} detections > errors_limit={errors_limit}: the breakdown (and the "
            "worst/ gallery) re-matches pycocotools' pairs in Python and holds the whole "
            "evaluation in memory; pass errors_limit=0 to compute it anyway"
        )
        log.info("error breakdown skipped: %s", skipped)
    breakdown = detailed and bool(error_ious) and not skipped
    gt, fixes = load_coco_gt(ann_file)
    scores = coco_evaluate(gt, table, keep_eval=breakdown)
    out = EvalResult(
        stats=scores.stats,
        detections=table,
        summary=scores.summary,
        images_per_s=speed,
        num_images=len(preds),
        class_names=list(detector.class_names),
        cat_ids=detector.cat_ids,
        per_class=scores.per_class,
        pr50=scores.pr50,
        confusion_conf=cm_conf,
        confusion_iou=cm_iou,
        gt_fixes=fixes,
        coco_gt=gt,
        errors_skipped=skipped,
    )
    if scores.matching is not None:  # P/R/F1 against the threshold: cheap beside the matching
        out.thresholds = thresholds_from_eval(
            scores.matching, out.detections, gt, out.cat_ids, out.class_names
        )
    if detailed:
        _add_details(out, preds, ann_file)
    if breakdown and scores.cocoeval is not None:
        out.errors = error_breakdown(scores.cocoeval, error_ious)
    out.eval_seconds = time.perf_counter() - start
    return out


def _add_details(out: EvalResult, dets: Predictions, ann_file: str | Path | dict[str, Any]) -> None:
    """VOC AP and the confusion matrix of a detailed run."""
    truth = ground_truth_by_image(out.coco_gt, out.cat_ids)
    if missing := set(dets) - set(truth):
        name = "the ground truth" if isinstance(ann_file, dict) else ann_file
        raise ValueError(f"{name} has no entry for image ids {sorted(missing)[:5]}")
    truth = {i: truth[i] for i in dets}  # the images this run saw
    num_classes = len(out.class_names)
    out.voc = voc_evaluate(dets, truth, num_classes)
    out.confusion = confusion_matrix(
        dets, truth, num_classes, conf=out.confusion_conf, iou_threshold=out.confusion_iou
    )

"""COCO box metrics: a COCO results list (the dataset's category ids, boxes xywh orig px) ->
pycocotools' 12 numbers, with the ground-truth traps repaired on a copy (:func:`load_coco_gt`)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from detkit.boxes.coords import box_convert
from detkit.core.io import write_atomic
from detkit.data.groundtruth import read_coco_json, repair_annotations
from detkit.eval.voc import ImageGT

log = logging.getLogger(__name__)

STAT_NAMES = (
    "mAP50-95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


@dataclass
class CocoScores:
    """pycocotools' ``stats`` by :data:`STAT_NAMES` (-1: no such objects) and ``summary``;
    ``per_class`` category id -> ``{"AP50-95", "AP50"}`` (NaN without ground truth); ``pr50``
    category id (with ground truth) -> ``[101]`` interpolated precision at recall 0, 0.01, ...,
    1 at IoU 0.5; ``cocoeval`` (when kept) and ``matching`` are None without detections."""

    stats: dict[str, float]
    summary: str
    per_class: dict[int, dict[str, float]]
    fixes: list[str]
    cocoeval: COCOeval | None = field(default=None, repr=False)
    pr50: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    matching: Matching | None = field(default=None, repr=False)


@dataclass
class DetTable:
    """COCO results as arrays, without a dict per detection: int64 ``image_ids [D]``, int64
    ``category_ids [D]`` (the dataset's), float64 ``boxes [D, 4]`` xywh orig px, float64 ``scores
    [D]``. Row ``k`` is results entry ``k`` (detection id ``k + 1`` in pycocotools' matching)."""

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_results(cls, results: list[dict[str, Any]]) -> DetTable:
        """The table of a COCO results list (``image_id``, ``category_id``, ``bbox``, ``score``)."""
        return cls(
            np.array([r["image_id"] for r in results], dtype=np.int64),
            np.array([r["category_id"] for r in results], dtype=np.int64),
            np.array([r["bbox"] for r in results], dtype=np.float64).reshape(len(results), 4),
            np.array([r["score"] for r in results], dtype=np.float64),
        )

    def entries(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        return self.entries_at(slice(start, stop))

    def entries_at(self, sl: slice | np.ndarray) -> list[dict[str, Any]]:
        """Rows ``sl`` (a slice or an index array) as COCO results dicts."""
        return [
            {"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(self.image_ids[sl].tolist(), self.category_ids[sl].tolist(),
                                  self.boxes[sl].tolist(), self.scores[sl].tolist(), strict=True)
        ]  # fmt: skip

    def write_json(self, path: str | Path, chunk: int = 50_000) -> Path:
        """Write the COCO results list to ``path`` atomically, ``chunk`` entries at a time."""

        def write(f: IO[bytes]) -> None:
            f.write(b"[")
            for start in range(0, len(self), chunk):
                text = json.dumps(self.entries(start, start + chunk))[1:-1]
                f.write(((", " if start else "") + text).encode())
            f.write(b"]")

        return write_atomic(path, write)


@dataclass
class Matching:
    """pycocotools' per-image matching (``COCOeval.evaluateImg``) as flat arrays, one entry per
    (area range, detection in its image and category's best 100), in evaluation order: ``det`` int64
    :class:`DetTable` row, ``area`` int8 (0 all, 1 small, 2 medium, 3 large), ``cat`` and ``image``
    int32 positions in the sorted ``cat_ids``, ``image_ids``, ``rank`` int32 position in its image
    and category's score order, ``matched`` and ``ignored`` (a crowd match, or unmatched outside the
    area range) bool ``[E, T]``; ``npig`` int64 ``[K, A]`` recall's divisors."""

    det: np.ndarray
    area: np.ndarray
    cat: np.ndarray
    image: np.ndarray
    rank: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray
    npig: np.ndarray
    cat_ids: list[int]
    image_ids: list[int]


# (ground truth, repair) pairs logged in this process: each is said once, however often the
# same file is scored (the returned ``fixes`` still list every repair, every time)
_REPORTED: set[tuple[str, str]] = set()


def load_coco_gt(gt: str | Path | dict[str, Any]) -> tuple[COCO, list[str]]:
    """``(coco, fixes)``: a COCO json path or dict (not modified) indexed into a ``COCO``, the
    traps repaired on a copy and listed in ``fixes`` (logged once per file and process). Raises
    ``FileNotFoundError``, or ``ValueError`` for a file or dict that is not a COCO document
    (malformed JSON naming the line, not an object, no ``images`` list)."""
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


def _check_results(gt: COCO, table: DetTable) -> None:
    """Refuse results pycocotools would score wrongly or reject with a bare assertion."""
    finite = np.isfinite(table.scores) & np.isfinite(table.boxes).all(axis=1)
    if not finite.all():
        bad = table.entries(int(np.flatnonzero(~finite)[0]))[0]
        raise ValueError(f"detection scores and boxes must be finite; got NaN or inf in {bad}")
    if unknown := set(np.unique(table.image_ids).tolist()) - set(gt.getImgIds()):
        raise ValueError(
            f"results name {len(unknown)} image id(s) not in the ground truth, e.g. "
            f"{sorted(unknown, key=str)[:5]}"
        )
    if stray := set(np.unique(table.category_ids).tolist()) - set(gt.getCatIds()):
        log.warning("results name category ids %s not in the ground truth (ignored)", stray)


def _per_class(
    precision: np.ndarray, cat_ids: list[int]
) -> tuple[dict[int, dict[str, float]], dict[int, np.ndarray]]:
    """AP50-95 and AP50 per category, and per category with ground truth the ``[101]`` precision
    at IoU 0.5, from the precision ``[T, R, K, A, M]`` (area "all", the largest maxDets)."""
    precision = precision[:, :, :, 0, -1]
    per_class, pr50 = {}, {}
    for k, cat in enumerate(cat_ids):
        p, p50 = precision[:, :, k], precision[0, :, k]
        per_class[int(cat)] = {
            "AP50-95": float(p[p > -1].mean()) if (p > -1).any() else math.nan,
            "AP50": float(p50[p50 > -1].mean()) if (p50 > -1).any() else math.nan,
        }
        if (p50 > -1).all():  # pycocotools' -1 marks none
            pr50[int(cat)] = p50.astype(np.float64)
    return per_class, pr50


# images and detections matched at a time when the COCOeval is not kept: pycocotools' objects
# per detection then bound the peak memory by a chunk, not by the whole set
CHUNK_IMAGES = 500
CHUNK_DETECTIONS = 50_000


def coco_evaluate(
    gt: str | Path | dict[str, Any] | COCO,
    results: list[dict[str, Any]] | DetTable,
    keep_eval: bool = True,
) -> CocoScores:
    """Score COCO ``results`` (entries with ``image_id``, ``category_id`` (the dataset's ids),
    ``bbox`` xywh orig px and ``score``, or their :class:`DetTable`; not modified) against ``gt``
    (a ``COCO``, or a json path or dict for :func:`load_coco_gt`) with pycocotools' own matching
    (``evaluateImg``) and arithmetic (:func:`accumulate`). ``keep_eval`` keeps the whole
    ``COCOeval`` (for the error breakdown); otherwise matching runs in bounded chunks. With no
    detections every number is 0 and the summary says so. ValueError: a score or box is
    NaN/inf, or an image id is not in the ground truth."""
    coco, fixes = (gt, []) if isinstance(gt, COCO) else load_coco_gt(gt)
    table = results if isinstance(results, DetTable) else DetTable.from_results(results)
    _check_results(coco, table)
    if not len(table):
        per_class = {int(c): {"AP50-95": 0.0, "AP50": 0.0} for c in coco.getCatIds()}
        summary = "no detections: every metric is 0 (pycocotools cannot score an empty list)"
        pr50 = {c: np.zeros(101) for c, n in objects_per_category(coco).items() if n}
        return CocoScores(dict.fromkeys(STAT_NAMES, 0.0), summary, per_class, fixes, None, pr50)
    image_ids = sorted(int(i) for i in coco.getImgIds())
    cat_ids = sorted(int(c) for c in coco.getCatIds())
    parts, ev = [], None
    for start, stop in _chunks(image_ids, table, keep_eval):
        ev = None  # the previous chunk's objects go before the next chunk's are made
        ev = _evaluate(coco, table, image_ids[start:stop])
        parts.append(_outcome(ev, start))
    keys = ("det", "area", "cat", "image", "rank", "matched", "ignored")
    arrays = (np.concatenate([p[k] for p in parts]) for k in keys)
    matching = Matching(*arrays, sum(p["npig"] for p in parts), cat_ids, image_ids)
    params = Params(iouType="bbox")
    precision, recall = accumulate(matching, table.scores, params)
    stats, lines = summarize(precision, recall, params)
    if keep_eval and ev is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()  # the error breakdown rescores against pycocotools' own arrays
    per_class, pr50 = _per_class(precision, cat_ids)
    ev = ev if keep_eval else None
    return CocoScores(stats, "\n".join(lines), per_class, fixes, ev, pr50, matching)


def _chunks(image_ids: list[int], table: DetTable, whole: bool) -> list[tuple[int, int]]:
    """``(start, stop)`` in the sorted ``image_ids`` of each chunk to match (one when ``whole``)."""
    n = len(image_ids)
    if whole:
        return [(0, n)] if n else []
    per_image = np.bincount(np.searchsorted(image_ids, table.image_ids), minlength=n)
    ends = np.cumsum(per_image)  # detections up to and including each image
    out, start = [], 0
    while start < n:
        before = int(ends[start - 1]) if start else 0
        fits = int(np.searchsorted(ends, before + CHUNK_DETECTIONS, side="right"))
        stop = max(start + 1, min(start + CHUNK_IMAGES, fits, n))
        out.append((start, stop))
        start = stop
    return out


def _evaluate(coco: COCO, table: DetTable, image_ids: list[int]) -> COCOeval:
    """``COCOeval.evaluate()`` over ``image_ids`` with the table's detections on them (what
    ``loadRes`` would make of them: ``id`` = row + 1, ``area`` = w * h; no segmentation)."""
    rows = np.flatnonzero(np.isin(table.image_ids, image_ids))
    anns = table.entries_at(rows)
    for row, ann in zip(rows.tolist(), anns, strict=True):
        ann["id"], ann["iscrowd"] = row + 1, 0
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    dt = COCO()
    dt.dataset = {"images": coco.dataset["images"], "categories": coco.dataset["categories"],
                  "annotations": anns}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
        ev = COCOeval(coco, dt, iouType="bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
    return ev


def _outcome(ev: COCOeval, first_image: int) -> dict[str, Any]:
    """One ``COCOeval``'s per-image evaluations as flat arrays, images from ``first_image``."""
    p = ev.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    ids, matches, ignores, meta, npig = [], [], [], [], np.zeros((len(p.catIds), n_area), np.int64)
    for n, e in enumerate(ev.evalImgs):
        if e is None:
            continue
        k, rest = divmod(n, n_area * n_img)
        a, i = divmod(rest, n_img)
        npig[k, a] += int(np.count_nonzero(e["gtIgnore"] == 0))
        if e["dtIds"]:
            ids.append(e["dtIds"])
            matches.append(e["dtMatches"])
            ignores.append(e["dtIgnore"])
            meta.append((len(e["dtIds"]), a, k, first_image + i))
    counts, areas, cats, images = np.array(meta, dtype=np.int64).reshape(-1, 4).T
    starts = np.cumsum(counts) - counts
    none = np.zeros((len(p.iouThrs), 0))  # so that an image set without detections concatenates
    return {  # in Matching's dtypes already: the parts and their join are never both wide
        "det": np.concatenate([np.zeros(0, np.int64), *(np.asarray(x, np.int64) for x in ids)]) - 1,
        "area": np.repeat(areas.astype(np.int8), counts),
        "cat": np.repeat(cats.astype(np.int32), counts),
        "image": np.repeat(images.astype(np.int32), counts),
        "rank": (np.arange(int(counts.sum())) - np.repeat(starts, counts)).astype(np.int32),
        "matched": np.concatenate([none, *matches], axis=1).T > 0,
        "ignored": np.concatenate([none.astype(bool), *ignores], axis=1).T.astype(bool),
        "npig": npig,
    }


def accumulate(
    matching: Matching, scores: np.ndarray, params: Params
) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' ``COCOeval.accumulate`` over flat arrays (score ties by image, then rank, as
    its stable sort): ``precision [T, R, K, A, M]``, ``recall [T, K, A, M]``; -1: no objects."""
    t_n, r_n = len(params.iouThrs), len(params.recThrs)
    k_n, a_n, m_n = len(matching.cat_ids), len(params.areaRng), len(params.maxDets)
    precision = -np.ones((t_n, r_n, k_n, a_n, m_n))
    recall = -np.ones((t_n, k_n, a_n, m_n))
    s = scores[matching.det]
    order = np.lexsort((matching.rank, matching.image, -s, matching.cat, matching.area))
    key = matching.area[order].astype(np.int64) * k_n + matching.cat[order]
    bounds = np.searchsorted(key, np.arange(a_n * k_n + 1))
    for a in range(a_n):
        for k in range(k_n):
            npig = int(matching.npig[k, a])
            if npig == 0:
                continue
            rows = order[bounds[a * k_n + k] : bounds[a * k_n + k + 1]]
            for m, max_det in enumerate(params.maxDets):
                sel = rows[matching.rank[rows] < max_det]
                _curves(matching, sel, npig, params.recThrs, precision[:, :, k, a, m],
                        recall[:, k, a, m])  # fmt: skip
    return precision, recall


def _curves(
    matching: Matching, sel: np.ndarray, npig: int, rec_thrs: np.ndarray,
    precision: np.ndarray, recall: np.ndarray,
) -> None:  # fmt: skip
    """Fill ``precision [T, R]`` and ``recall [T]`` of the detections ``sel`` (score order)."""
    kept = ~matching.ignored[sel]
    tp = np.cumsum(matching.matched[sel] & kept, axis=0).astype(np.float64)  # [D, T]
    fp = np.cumsum(~matching.matched[sel] & kept, axis=0).astype(np.float64)
    nd = len(sel)
    recall[:] = tp[-1] / npig if nd else 0.0
    precision[:] = 0.0
    if not nd:
        return
    rc = tp / npig
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1], axis=0)[::-1]  # pycocotools' right-to-left envelope
    for t in range(tp.shape[1]):
        inds = np.searchsorted(rc[:, t], rec_thrs, side="left")
        valid = inds < nd  # pycocotools stops at the first recall it never reaches
        precision[t, valid] = pr[inds[valid], t]


_SUMMARY = (  # (AP or AR, IoU, area, maxDets): pycocotools' 12 summary lines
    (1, None, "all", 100), (1, 0.5, "all", 100), (1, 0.75, "all", 100),
    (1, None, "small", 100), (1, None, "medium", 100), (1, None, "large", 100),
    (0, None, "all", 1), (0, None, "all", 10), (0, None, "all", 100),
    (0, None, "small", 100), (0, None, "medium", 100), (0, None, "large", 100),
)  # fmt: skip


def summarize(
    precision: np.ndarray, recall: np.ndarray, params: Params
) -> tuple[dict[str, float], list[str]]:
    """pycocotools' ``COCOeval.summarize``: the 12 numbers by :data:`STAT_NAMES` and its lines
    ("Average Precision (AP) @[ IoU=0.50:0.95 | area= all | maxDets=100 ] = 0.504")."""
    stats, lines = {}, []
    for name, (ap, iou, area, max_det) in zip(STAT_NAMES, _SUMMARY, strict=True):
        a = params.areaRngLbl.index(area)
        m = params.maxDets.index(max_det)
        values = precision[:, :, :, a, m] if ap else recall[:, :, a, m]
        if iou is not None:
            values = values[np.where(iou == params.iouThrs)[0]]
        valid = values[values > -1]
        stats[name] = float(np.mean(valid)) if valid.size else -1.0
        thr = (f"{params.iouThrs[0]:0.2f}:{params.iouThrs[-1]:0.2f}" if iou is None
               else f"{iou:0.2f}")  # fmt: skip
        title, kind = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        lines.append(f" {title:<18} {kind} @[ IoU={thr:<9} | area={area:>6s} | "
                     f"maxDets={max_det:>3d} ] = {stats[name]:0.3f}")  # fmt: skip
    return stats, lines


def matches_at(matching: Matching, iou: float, num_dets: int) -> np.ndarray:
    """Each of ``num_dets`` results entries' outcome at one of pycocotools' IoU thresholds (area
    "all"): ``[N]`` int8, 1 true positive, 0 false positive, -1 not scored (beyond 100 per image
    and class, or on a crowd box)."""
    thrs = [round(float(t), 4) for t in Params(iouType="bbox").iouThrs]
    if round(iou, 4) not in thrs:
        raise ValueError(f"IoU {iou} is not one of the evaluation's thresholds {thrs}")
    ti = thrs.index(round(iou, 4))
    out = np.full(num_dets, -1, dtype=np.int8)
    sel = np.flatnonzero(matching.area == 0)
    scored = ~matching.ignored[sel, ti]
    out[matching.det[sel[scored]]] = matching.matched[sel[scored], ti].astype(np.int8)
    return out


def objects_per_category(coco: COCO) -> dict[int, int]:
    """Non-crowd annotations per category id (the objects recall divides by)."""
    counts = dict.fromkeys((int(c) for c in coco.getCatIds()), 0)
    for a in coco.anns.values():
        if not a.get("iscrowd", 0) and a["category_id"] in counts:
            counts[a["category_id"]] += 1
    return counts


def ground_truth_by_image(coco: COCO, cat_ids: list[int] | None) -> dict[int, ImageGT]:
    """image id -> ``(boxes [G, 4] float64 xyxy orig px, labels [G] int64, iscrowd [G] bool)``;
    ``cat_ids``: label -> category id (None: identity; other categories left out)."""
    to_label = {c: i for i, c in enumerate(cat_ids)} if cat_ids is not None else None
    out: dict[int, ImageGT] = {}
    for image_id in coco.getImgIds():
        anns = coco.imgToAnns.get(image_id, [])
        if to_label is not None:
            anns = [a for a in anns if a["category_id"] in to_label]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = box_convert(xywh, "xywh", "xyxy")
        cats = [a["category_id"] for a in anns]
        labels = np.array([c if to_label is None else to_label[c] for c in cats], dtype=np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        out[int(image_id)] = (boxes, labels, crowd)
    return out

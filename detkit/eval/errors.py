"""TIDE-style error breakdown (Bolya et al., ECCV 2020) on pycocotools' own matching and IoU:
false positives typed ``dupe``, ``cls``, ``loc``, ``both``, ``bkg`` (in that order), ``miss``
for unmatched objects; a type's ``dAP`` is the mAP gained by fixing it alone (re-scored)."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from detkit.core.io import json_float

ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")
"""Error types in report order; a detection's code is ``1 + ERROR_TYPES.index(type)``."""
TP, NOT_SCORED = 0, -1
ERROR_COLORS = {
    "tp": (40, 170, 60), "cls": (220, 40, 40), "loc": (255, 140, 0), "both": (160, 60, 200),
    "dupe": (230, 200, 0), "bkg": (30, 120, 230), "miss": (130, 130, 130),
}  # fmt: skip
"""RGB colour of each error type (and of true positives) in plots and the worst-images gallery."""
SIZES = ("small", "medium", "large")
BACKGROUND_IOU = 0.1
_CLS, _LOC, _BOTH, _DUPE, _BKG = 1, 2, 3, 4, 5


def type_name(code: int) -> str:
    """``"tp"``, ``"not scored"`` or an :data:`ERROR_TYPES` name for a detection code."""
    return {TP: "tp", NOT_SCORED: "not scored"}.get(code) or ERROR_TYPES[code - 1]


@dataclass
class Classified:
    """The errors at one IoU threshold: ``det_type [N]`` int8 per results entry (``TP``,
    ``NOT_SCORED`` or ``1 + ERROR_TYPES.index(type)``), ``target [N]`` the annotation id it
    found or points at (0: none), and the annotation ids ``matched`` and ``missed``."""

    det_type: np.ndarray
    target: np.ndarray
    matched: set[int]
    missed: list[int]


@dataclass
class ErrorBreakdown:
    """Counts and dAP of each error type. ``counts``, ``map_base``, ``dap``, ``fixed_all``,
    ``per_class`` and ``per_size`` are at the first of ``iou_thresholds``; ``dap_avg`` and
    ``map_avg`` average over all of them. ``per_class``: category id -> ``{"counts", "dAP50"}``
    (counts to the predicted class, ``miss`` to the true one); ``per_size``: by COCO area of the
    object (of the detection for ``bkg``)."""

    iou_thresholds: list[float]
    counts: dict[str, int]
    map_base: float
    dap: dict[str, float]
    dap_avg: dict[str, float]
    map_avg: float
    fixed_all: float
    per_class: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    per_size: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    classified: Classified | None = field(default=None, repr=False)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """One console line per type: count, dAP50 and (over several IoUs) the average dAP."""
        avg = len(self.iou_thresholds) > 1
        out = []
        for t in ERROR_TYPES:
            line = f"{t:<5} {self.counts[t]:>7}  dAP50 {self.dap[t]:+.4f}"
            out.append(line + (f"  dAP50-95 {self.dap_avg[t]:+.4f}" if avg else ""))
        return out

    def to_dict(self, class_names: list[str], cat_ids: list[int] | None) -> dict[str, Any]:
        """Plain JSON data (``NaN`` -> None); per-class rows carry the class name."""
        cats = cat_ids if cat_ids is not None else range(len(class_names))
        names = dict(zip(cats, class_names, strict=True))
        coco = len(self.iou_thresholds) == 10  # the averages are mAP50-95's only over all ten
        rows = []
        for cat, row in self.per_class.items():
            name = names.get(cat, f"category {cat} (not a model class)")
            rows.append({"name": name, "category_id": cat, **_clean(row)})
        return {
            "types": list(ERROR_TYPES),
            "iou": self.iou_thresholds[0],
            "iou_thresholds": self.iou_thresholds,
            "background_iou": BACKGROUND_IOU,
            "counts": self.counts,
            "mAP50": json_float(self.map_base),
            "dAP50": _clean(self.dap),
            "mAP50-95": json_float(self.map_avg) if coco else None,
            "dAP50-95": _clean(self.dap_avg) if coco else None,
            "gap50": json_float(1.0 - self.map_base),
            "sum_dAP50": json_float(sum(self.dap.values())),
            "mAP50_all_fixed": json_float(self.fixed_all),
            "per_class": rows,
            "per_size": {s: _clean(v) for s, v in self.per_size.items()},
            "seconds": round(self.seconds, 3),
        }


def _clean(d: dict) -> dict:
    return {k: _clean(v) if isinstance(v, dict) else json_float(v) for k, v in d.items()}


class _Matching:
    """Index over a ``COCOeval`` that has run ``evaluate()``: image/class positions and IoUs."""

    def __init__(self, ev: COCOeval) -> None:
        p = ev.params
        self.ev = ev
        self.n_img, self.n_area = len(p.imgIds), len(p.areaRng)
        self.img_pos = {int(i): n for n, i in enumerate(p.imgIds)}
        self.cat_pos = {int(c): n for n, c in enumerate(p.catIds)}
        self.dts = ev.cocoDt.anns  # id -> detection (results entry k has id k + 1)
        self.gts = ev.cocoGt.anns
        self.n_results = len(self.dts)

    def entries(self) -> list[dict]:
        """The per-image evaluations of area range "all", every class."""
        starts = range(0, len(self.ev.evalImgs), max(self.n_area * self.n_img, 1))
        return [e for s in starts for e in self.ev.evalImgs[s : s + self.n_img] if e is not None]

    def index(self, image_id: int, cat: int, area: int) -> int:
        return (self.cat_pos[cat] * self.n_area + area) * self.n_img + self.img_pos[image_id]


def _image_ious(m: _Matching) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: scored detection ids ``[D]``, non-crowd object ids ``[G]``, IoU ``[D, G]``."""
    dets: dict[int, list[int]] = defaultdict(list)
    for e in m.entries():
        dets[int(e["image_id"])].extend(e["dtIds"])
    out = {}
    for image_id, ids in dets.items():
        anns = m.ev.cocoGt.imgToAnns.get(image_id, [])
        gts = [g for g in anns if not g.get("iscrowd", 0) and int(g["category_id"]) in m.cat_pos]
        d = [m.dts[i]["bbox"] for i in ids]
        g = [x["bbox"] for x in gts]
        iou = np.asarray(mask_utils.iou(d, g, [0] * len(g))) if d and g else np.zeros((0, 0))
        out[image_id] = (np.array(ids), np.array([x["id"] for x in gts]), iou.reshape(len(d), -1))
    return out


def _fp_types(
    fp_cat: np.ndarray, gt_cat: np.ndarray, iou: np.ndarray, t: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes [F], target column [F] or -1)`` of false positives of categories ``fp_cat
    [F]`` against the image's non-crowd objects ``gt_cat [G]``, ``iou [F, G]``, at IoU ``t``."""
    if iou.shape[1] == 0:
        return np.full(len(fp_cat), _BKG), np.full(len(fp_cat), -1)
    same = gt_cat[None, :] == fp_cat[:, None]
    iou_same, iou_other = np.where(same, iou, -1.0), np.where(same, -1.0, iou)
    s_max, o_max = iou_same.max(1), iou_other.max(1)
    s_arg, o_arg = iou_same.argmax(1), iou_other.argmax(1)
    conds = [s_max >= t, o_max >= t, s_max >= BACKGROUND_IOU, o_max >= BACKGROUND_IOU]
    codes = np.select(conds, [_DUPE, _CLS, _LOC, _BOTH], _BKG)
    return codes, np.select(conds, [s_arg, o_arg, s_arg, o_arg], -1)


def classify(
    m: _Matching, ious: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], ti: int
) -> Classified:
    """Type every scored detection and unmatched object at threshold index ``ti``."""
    t = float(m.ev.params.iouThrs[ti])
    det_type = np.full(m.n_results, NOT_SCORED, dtype=np.int8)
    target = np.zeros(m.n_results, dtype=np.int64)
    matched: set[int] = set()
    unmatched: list[int] = []
    fps: dict[int, list[int]] = defaultdict(list)
    for e in m.entries():
        dtm, dtig = e["dtMatches"][ti], e["dtIgnore"][ti]
        for d, gt_id, ig in zip(e["dtIds"], dtm, dtig, strict=True):
            if gt_id > 0 and not ig:
                det_type[d - 1], target[d - 1] = TP, int(gt_id)
                matched.add(int(gt_id))
            elif not ig:
                fps[int(e["image_id"])].append(d)
        gtm, gtig = e["gtMatches"][ti], e["gtIgnore"]
        unmatched += [g for g, hit, ig in zip(e["gtIds"], gtm, gtig, strict=True) if not hit + ig]
    for image_id, ids in fps.items():
        all_ids, gt_ids, iou = ious[image_id]
        row = {d: r for r, d in enumerate(all_ids.tolist())}
        fp_cat = np.array([m.dts[d]["category_id"] for d in ids])
        gt_cat = np.array([m.gts[g]["category_id"] for g in gt_ids.tolist()])
        codes, cols = _fp_types(fp_cat, gt_cat, iou[[row[d] for d in ids]], t)
        idx = np.asarray(ids) - 1
        det_type[idx] = codes
        target[idx[cols >= 0]] = gt_ids[cols[cols >= 0]]
    pointed = set(target[(det_type == _CLS) | (det_type == _LOC)].tolist())
    return Classified(det_type, target, matched, [int(g) for g in unmatched if g not in pointed])


@dataclass
class _Fix:
    """What fixing some error types changes: ``changes`` ``(image_id, category_id) -> (objects,
    detections)`` of every touched pair; ``rebuilt`` the pairs matched again (a detection gained
    or moved); ``dropped`` detection ids leaving their pair; ``gone`` object ids removed."""

    changes: dict[tuple[int, int], tuple[list[dict], list[dict]]]
    rebuilt: set[tuple[int, int]]
    dropped: set[int]
    gone: set[int]


def _fix(m: _Matching, c: Classified, types: set[str]) -> _Fix:
    """The image/class pairs whose (objects, detections) change when ``types`` are fixed."""
    removed: set[int] = set()
    moved: dict[int, dict] = {}
    claimed = set(c.matched)
    codes = {1 + ERROR_TYPES.index(t) for t in types if t != "miss"}
    todo = np.flatnonzero(np.isin(c.det_type, list(codes)))
    scores = np.array([m.dts[int(d) + 1]["score"] for d in todo])
    for d in todo[np.argsort(-scores, kind="stable")]:  # a higher score claims an object first
        code, dt = int(c.det_type[d]), m.dts[int(d) + 1]
        if code not in (_CLS, _LOC):
            removed.add(dt["id"])
            continue
        gt = m.gts[int(c.target[d])]
        if gt["id"] in claimed:  # already found: the fixed box would be a duplicate
            removed.add(dt["id"])
            continue
        claimed.add(gt["id"])
        fixed = {**dt, "category_id": gt["category_id"]} if code == _CLS else dict(dt)
        if code == _LOC:
            fixed["bbox"] = list(gt["bbox"])
            fixed["area"] = gt["bbox"][2] * gt["bbox"][3]
        moved[dt["id"]] = fixed
    gone = set(c.missed) if "miss" in types else set()
    rebuilt = {(d["image_id"], d["category_id"]) for d in moved.values()}
    pairs = {(m.dts[i]["image_id"], m.dts[i]["category_id"]) for i in removed | set(moved)}
    pairs |= rebuilt | {(m.gts[g]["image_id"], m.gts[g]["category_id"]) for g in gone}
    out = {}
    for pair in pairs:
        gts = [g for g in m.ev._gts[pair] if g["id"] not in gone]
        dts = [d for d in m.ev._dts[pair] if d["id"] not in removed and d["id"] not in moved]
        dts += [d for d in moved.values() if (d["image_id"], d["category_id"]) == pair]
        out[pair] = (gts, dts)
    return _Fix(out, rebuilt, removed | set(moved), gone)


def _sliced(ev: COCOeval, ti: int) -> list[dict | None]:
    """The base per-image evaluations reduced to threshold index ``ti``."""
    s = slice(ti, ti + 1)
    keys = ("dtMatches", "gtMatches", "dtIgnore")
    return [None if e is None else {**e, **{k: e[k][s] for k in keys}} for e in ev.evalImgs]


def _filtered(e: dict | None, dropped: set[int], gone: set[int]) -> dict | bool | None:
    """A base evaluation with unmatched detections / objects taken out (greedy matching: that
    changes no other match), or False when a dropped one was matched (match again)."""
    if e is None:
        return None
    dt_out = np.array([i in dropped for i in e["dtIds"]], dtype=bool)
    gt_out = np.array([i in gone for i in e["gtIds"]], dtype=bool)
    if (e["dtMatches"][:, dt_out] > 0).any() or (e["gtMatches"][:, gt_out] > 0).any():
        return False
    kd, kg = ~dt_out, ~gt_out
    if not kd.any() and not kg.any():
        return None
    return {
        **e,
        "dtIds": [i for i, k in zip(e["dtIds"], kd, strict=True) if k],
        "dtScores": [v for v, k in zip(e["dtScores"], kd, strict=True) if k],
        "dtMatches": e["dtMatches"][:, kd],
        "dtIgnore": e["dtIgnore"][:, kd],
        "gtIds": [i for i, k in zip(e["gtIds"], kg, strict=True) if k],
        "gtMatches": e["gtMatches"][:, kg],
        "gtIgnore": e["gtIgnore"][kg],
    }


def rescore(
    m: _Matching, sliced: list[dict | None], ti: int, fix: _Fix | None, areas: int
) -> np.ndarray:
    """pycocotools' precision ``[R, K, areas]`` (-1: no objects) at threshold index ``ti``
    after ``fix`` (None: the base): touched pairs matched again by ``evaluateImg`` unless
    :func:`_filtered` suffices. ``areas``: the first area ranges (1: all; 4: all, S, M, L)."""
    base = m.ev
    ev = copy.copy(base)
    p = ev.params = copy.deepcopy(base.params)
    p.iouThrs = np.array([base.params.iouThrs[ti]])
    ev._gts, ev._dts = defaultdict(list, base._gts), defaultdict(list, base._dts)
    ev.ious = dict(base.ious)
    ev.evalImgs = list(sliced)
    max_det = p.maxDets[-1]
    for pair, (gts, dts) in (fix.changes if fix else {}).items():
        ev._gts[pair], ev._dts[pair] = gts, dts
        again = pair in fix.rebuilt or len(base._dts[pair]) > max_det  # a 101st may move up
        for a, rng in enumerate(p.areaRng[:areas]):  # the others are not accumulated
            idx = m.index(*pair, a)
            kept = False if again else _filtered(sliced[idx], fix.dropped, fix.gone)
            if kept is False:
                if pair not in ev.ious or ev.ious[pair] is base.ious.get(pair):
                    ev.ious[pair] = ev.computeIoU(*pair)
                kept = ev.evaluateImg(*pair, rng, max_det)
            ev.evalImgs[idx] = kept
    ev._paramsEval = copy.deepcopy(p)
    q = copy.deepcopy(p)
    q.areaRng, q.areaRngLbl, q.maxDets = p.areaRng[:areas], p.areaRngLbl[:areas], p.maxDets[-1:]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate(q)
    return ev.eval["precision"][0, :, :, :, 0]


def mean_precision(precision: np.ndarray) -> float:
    """pycocotools' average of a precision block over the entries that are not ``-1``."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else math.nan


def _tally(m: _Matching, c: Classified) -> tuple[dict, dict, dict]:
    """Counts per type, per (category, type) and per (size, type) at one threshold."""
    counts = dict.fromkeys(ERROR_TYPES, 0)
    by_cat: dict[int, dict[str, int]] = {k: dict.fromkeys(ERROR_TYPES, 0) for k in m.cat_pos}
    by_size = {s: dict.fromkeys(ERROR_TYPES, 0) for s in SIZES}
    found = []  # (type, category, COCO area)
    for d in np.flatnonzero(c.det_type > 0):
        dt = m.dts[int(d) + 1]
        area = m.gts[int(c.target[d])]["area"] if c.target[d] else dt["area"]
        found.append((ERROR_TYPES[int(c.det_type[d]) - 1], dt["category_id"], area))
    found += [("miss", m.gts[g]["category_id"], m.gts[g]["area"]) for g in c.missed]
    for name, cat, area in found:
        counts[name] += 1
        by_cat[cat][name] += 1
        size = "small" if area <= 32**2 else "medium" if area <= 96**2 else "large"  # COCO's bins
        by_size[size][name] += 1
    return counts, by_cat, by_size


def error_breakdown(ev: COCOeval, iou_thresholds: tuple[float, ...] = (0.5,)) -> ErrorBreakdown:
    """Classify every error of ``ev`` (the headline ``COCOeval`` after ``evaluate()`` and
    ``accumulate()``, not modified; ``iouThrs`` hold all ``iou_thresholds``), measure dAPs."""
    start = time.perf_counter()
    m = _Matching(ev)
    ious = _image_ious(m)
    all_thr = [round(float(t), 4) for t in ev.params.iouThrs]
    daps: dict[str, list[float]] = {t: [] for t in ERROR_TYPES}
    bases: list[float] = []
    for n, t in enumerate(iou_thresholds):
        if round(t, 4) not in all_thr:
            raise ValueError(f"IoU {t} is not one of the evaluation's thresholds {all_thr}")
        ti = all_thr.index(round(t, 4))
        c = classify(m, ious, ti)
        sliced = _sliced(ev, ti)
        areas = len(ev.params.areaRng) if n == 0 else 1
        base = ev.eval["precision"][ti, :, :, :areas, -1]  # the headline's own, at 100 per image
        bases.append(mean_precision(base[:, :, 0]))
        fixed = {e: rescore(m, sliced, ti, _fix(m, c, {e}), areas) for e in ERROR_TYPES}
        for e in ERROR_TYPES:
            daps[e].append(mean_precision(fixed[e][:, :, 0]) - bases[-1])
        if n == 0:
            first, first_base, first_fixed = c, base, fixed
            fixed_all = rescore(m, sliced, ti, _fix(m, c, set(ERROR_TYPES)), 1)
    counts, by_cat, by_size = _tally(m, first)

    def rows(counts: dict, col: int | slice, area: int) -> dict[str, dict[str, float]]:
        base = mean_precision(first_base[:, col, area])
        dap = {e: mean_precision(first_fixed[e][:, col, area]) - base for e in ERROR_TYPES}
        return {"counts": counts, "dAP50": dap}

    per_class = {cat: rows(by_cat[cat], k, 0) for cat, k in m.cat_pos.items()}
    per_size = {
        s: rows(by_size[s], slice(None), a + 1)
        for a, s in enumerate(SIZES)
        if first_base.shape[2] > a + 1
    }
    return ErrorBreakdown(
        iou_thresholds=[float(t) for t in iou_thresholds],
        counts=counts,
        map_base=bases[0],
        dap={e: v[0] for e, v in daps.items()},
        dap_avg={e: float(np.mean(v)) for e, v in daps.items()},
        map_avg=float(np.mean(bases)),
        fixed_all=mean_precision(fixed_all[:, :, 0]),
        per_class=per_class,
        per_size=per_size,
        classified=first,
        seconds=time.perf_counter() - start,
    )

"""Pascal VOC AP on hand-computed cases, and against a literal port of the devkit's loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detkit.eval import confusion_matrix, voc_ap, voc_evaluate


def box(x: float, y: float = 0.0, w: float = 10.0, h: float = 10.0) -> list[float]:
    return [x, y, x + w, y + h]


def dets(*rows: tuple[list[float], float, int]):
    """(box, score, label) rows -> (boxes [K, 4], scores [K], labels [K])."""
    if not rows:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)
    boxes, scores, labels = zip(*rows, strict=True)
    return np.array(boxes, float), np.array(scores, float), np.array(labels, np.int64)


def gt(*rows: tuple[list[float], int, bool]):
    """(box, label, difficult) rows -> (boxes, labels, difficult)."""
    if not rows:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    boxes, labels, difficult = zip(*rows, strict=True)
    return np.array(boxes, float), np.array(labels, np.int64), np.array(difficult, bool)


def test_tp_fp_sequence():
    # 3 objects; detections TP, FP, TP, FP by decreasing score.
    # recall 1/3 1/3 2/3 2/3, precision 1 1/2 2/3 1/2:
    # all-point AP = 1/3 * 1 + 1/3 * 2/3 = 5/9; 11-point: 4 thresholds at 1, 3 at 2/3 -> 6/11.
    truth = {1: gt((box(0), 0, False), (box(20), 0, False), (box(40), 0, False))}
    found = {1: dets((box(0), 0.9, 0), (box(100), 0.8, 0), (box(20), 0.7, 0), (box(200), 0.6, 0))}
    r = voc_evaluate(found, truth, num_classes=1)
    assert r.ap[0] == pytest.approx(5 / 9, abs=1e-12)
    assert r.ap07[0] == pytest.approx(6 / 11, abs=1e-12)
    np.testing.assert_allclose(r.recall[0], [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r.precision[0], [1, 1 / 2, 2 / 3, 1 / 2])


def test_difficult_objects_are_neither_counted_nor_missed():
    # The top detection hits a difficult object: ignored (an FP would give AP 0.5), and the
    # difficult object is not in the denominator (counting it, unmatched, would give 0.5).
    truth = {1: gt((box(0), 0, False), (box(50), 0, True))}
    found = {1: dets((box(50), 0.95, 0), (box(0), 0.5, 0))}
    r = voc_evaluate(found, truth, num_classes=1)
    assert r.num_gt[0] == 1
    assert r.ap[0] == pytest.approx(1.0) and r.ap07[0] == pytest.approx(1.0)
    missed = voc_evaluate({1: dets((box(0), 0.5, 0))}, truth, num_classes=1)
    assert missed.ap[0] == pytest.approx(1.0)


def test_duplicate_detection_is_a_false_positive():
    # TP, duplicate (FP), TP: recall 1/2 1/2 1, precision 1 1/2 2/3.
    # all-point = 1/2 + 1/2 * 2/3 = 5/6; 11-point = (6 * 1 + 5 * 2/3) / 11 = 28/33.
    truth = {1: gt((box(0), 0, False), (box(20), 0, False))}
    found = {1: dets((box(0), 0.9, 0), (box(0.5), 0.8, 0), (box(20), 0.7, 0))}
    r = voc_evaluate(found, truth, num_classes=1)
    assert r.ap[0] == pytest.approx(5 / 6, abs=1e-12)
    assert r.ap07[0] == pytest.approx(28 / 33, abs=1e-12)


@pytest.mark.parametrize(("height", "ap"), [(20.0, 0.0), (19.0, 1.0)])
def test_iou_must_exceed_one_half(height, ap):
    # [0,0,10,20] vs [0,0,10,10]: IoU exactly 0.5, not a match (the devkit's ">");
    # height 19: IoU 100/190 > 0.5, a match.
    truth = {1: gt((box(0), 0, False))}
    r = voc_evaluate({1: dets((box(0, h=height), 0.9, 0))}, truth, num_classes=1)
    assert r.ap[0] == ap


def test_global_score_order_across_images_and_classes_without_gt():
    # img 2's 0.9 FP comes first: recall 0 1/2 1, precision 0 1/2 2/3 -> the envelope is 2/3
    # at every recall: both forms give 2/3. Class 1 has detections but no objects: NaN, and
    # left out of the mean.
    truth = {1: gt((box(0), 0, False)), 2: gt((box(0), 0, False))}
    found = {
        1: dets((box(0), 0.6, 0), (box(30), 0.99, 1)),
        2: dets((box(80), 0.9, 0), (box(0), 0.3, 0)),
    }
    r = voc_evaluate(found, truth, num_classes=2)
    assert r.ap[0] == pytest.approx(2 / 3) and r.ap07[0] == pytest.approx(2 / 3)
    assert math.isnan(r.ap[1]) and r.num_gt[1] == 0
    assert r.map == pytest.approx(2 / 3) and r.map07 == pytest.approx(2 / 3)
    assert r.to_dict(["a", "b"])["per_class"]["b"]["AP50"] is None


def test_perfect_and_empty():
    truth = {1: gt((box(0), 0, False), (box(30), 1, False)), 2: gt()}
    perfect = {1: dets((box(0), 0.9, 0), (box(30), 0.8, 1))}
    r = voc_evaluate(perfect, truth, num_classes=2)
    assert r.map == 1.0 and r.map07 == 1.0
    none = voc_evaluate({}, truth, num_classes=2)
    assert none.map == 0.0 and none.map07 == 0.0
    with pytest.raises(KeyError, match="no ground truth"):
        voc_evaluate({7: dets((box(0), 0.9, 0))}, truth, num_classes=2)


def test_voc_ap_forms_on_a_textbook_curve():
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0
    # recall reaching exactly 0.3: the 11-point threshold 0.3 must count it.
    rec, prec = np.array([0.1, 0.2, 0.3]), np.array([1.0, 1.0, 1.0])
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(4 / 11)
    assert voc_ap(rec, prec) == pytest.approx(0.3)


def _devkit_reference(found, truth, c, thr=0.5):
    """A literal port of py-faster-rcnn's voc_eval loop (no +1 px), for one class."""
    records = {
        i: {"bbox": b[lab == c], "difficult": d[lab == c]} for i, (b, lab, d) in truth.items()
    }
    for r in records.values():
        r["det"] = [False] * len(r["bbox"])
    npos = sum(int((~r["difficult"]).sum()) for r in records.values())
    ids, conf, bb = [], [], []
    for i, (b, s, lab) in found.items():
        for k in np.flatnonzero(lab == c):
            ids.append(i)
            conf.append(s[k])
            bb.append(b[k])
    order = np.argsort(-np.array(conf), kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, k in enumerate(order):
        r, bbd = records[ids[k]], bb[k]
        ovmax, jmax = -np.inf, -1
        for j, g in enumerate(r["bbox"]):
            iw = max(min(g[2], bbd[2]) - max(g[0], bbd[0]), 0.0)
            ih = max(min(g[3], bbd[3]) - max(g[1], bbd[1]), 0.0)
            inter = iw * ih
            union = (bbd[2] - bbd[0]) * (bbd[3] - bbd[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
            if inter / union > ovmax:
                ovmax, jmax = inter / union, j
        if ovmax > thr:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d], r["det"][jmax] = 1.0, True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec), voc_ap(rec, prec, use_07_metric=True)


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_devkit_loop_on_random_scenes(seed):
    rng = np.random.default_rng(seed)
    truth, found = {}, {}
    for image in range(6):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 80, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 30, (n, 2))], axis=1)
        truth[image] = (boxes, rng.integers(0, 3, n), rng.random(n) < 0.2)
        k = int(rng.integers(0, 10))
        jitter = rng.normal(0, 3, (k, 4))
        base = boxes[rng.integers(0, n, k)] if n else rng.uniform(0, 80, (k, 4))
        p = base + jitter
        pred = np.concatenate(
            [np.minimum(p[:, :2], p[:, 2:]), np.maximum(p[:, :2], p[:, 2:]) + 1], 1
        )
        found[image] = (pred, rng.random(k), rng.integers(0, 3, k))
    r = voc_evaluate(found, truth, num_classes=3)
    for c in range(3):
        if r.num_gt[c] == 0:
            continue
        ap, ap07 = _devkit_reference(found, truth, c)
        assert r.ap[c] == pytest.approx(ap, abs=1e-12)
        assert r.ap07[c] == pytest.approx(ap07, abs=1e-12)


def test_confusion_matrix_hand_case():
    # A found as class 0 (diagonal); B (class 1) found as class 0; C (class 1) only by a
    # detection under the score threshold -> missed; one detection of class 1 on nothing.
    truth = {
        1: gt((box(0), 0, False), (box(20), 1, False), (box(40), 1, False), (box(60), 0, True))
    }
    found = {
        1: dets(
            (box(0), 0.9, 0),
            (box(20), 0.8, 0),
            (box(100), 0.7, 1),
            (box(40), 0.1, 1),
            (box(60), 0.9, 1),  # on an ignored object: dropped, not a false alarm
        ),
        2: dets(),
    }
    truth[2] = gt((box(0), 1, False))  # an image with no detections: its object is missed
    m = confusion_matrix(found, truth, num_classes=2, conf=0.25, iou_threshold=0.45)
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 0, 1], [0, 2, 0]])


def test_confusion_matching_is_one_to_one_by_iou():
    # Two detections on one object: the higher-IoU one matches, the other is a false alarm.
    truth = {1: gt((box(0), 0, False))}
    found = {1: dets((box(2), 0.9, 0), (box(0.5), 0.5, 0))}
    m = confusion_matrix(found, truth, num_classes=1)
    np.testing.assert_array_equal(m, [[1, 1], [0, 0]])

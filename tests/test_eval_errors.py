"""TIDE-style error breakdown: injected errors move exactly their own count and dAP."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.eval import coco_evaluate
from detkit.eval.errors import (
    ERROR_TYPES,
    TP,
    _fix,
    _image_ious,
    _Matching,
    _sliced,
    classify,
    error_breakdown,
    rescore,
    type_name,
)

CATS = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
# (image, category, xywh): sizes small (<= 32²), medium and large
OBJECTS = [
    (1, 3, [10, 10, 40, 40]),
    (1, 7, [100, 100, 80, 80]),
    (1, 3, [60, 120, 20, 20]),
    (2, 3, [20, 20, 150, 150]),
    (2, 7, [5, 160, 30, 30]),
    (2, 7, [170, 10, 25, 60]),
]
COCO_THRESHOLDS = tuple(np.linspace(0.5, 0.95, 10))


@pytest.fixture
def gt_file(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 200} for i in (1, 2)]
    anns = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3]}
        for k, (i, c, b) in enumerate(OBJECTS)
    ]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    return path


def _perfect() -> list[dict]:
    """One exact detection per object, scores 0.95, 0.9, ... in object order."""
    return [
        {"image_id": i, "category_id": c, "bbox": list(b), "score": 0.95 - 0.05 * k}
        for k, (i, c, b) in enumerate(OBJECTS)
    ]


def _breakdown(gt_file, results, thresholds=(0.5,)):
    scores = coco_evaluate(gt_file, results)
    return scores, error_breakdown(scores.cocoeval, thresholds)


def _only(b, kind: str, count: int = 1) -> None:
    """``kind`` has ``count`` errors and all of the gap; every other type has none of either."""
    for t in ERROR_TYPES:
        assert b.counts[t] == (count if t == kind else 0), (t, b.counts)
        if t != kind:
            assert b.dap[t] == 0.0, (t, b.dap)
    assert b.dap[kind] > 0
    assert b.dap[kind] == pytest.approx(1.0 - b.map_base, abs=1e-12)
    assert b.fixed_all == pytest.approx(1.0, abs=1e-12)


def test_perfect_predictions_have_no_errors(gt_file):
    scores, b = _breakdown(gt_file, _perfect(), COCO_THRESHOLDS)
    assert scores.stats["mAP50-95"] == pytest.approx(1.0)
    assert b.counts == dict.fromkeys(ERROR_TYPES, 0)
    assert b.dap == dict.fromkeys(ERROR_TYPES, 0.0)
    assert b.map_base == 1.0 and b.map_avg == pytest.approx(1.0)
    assert (b.classified.det_type == TP).all()


def test_shifted_box_is_a_localisation_error(gt_file):
    results = _perfect()
    results[1]["bbox"][0] += 48  # 80 px wide, shifted 60%: IoU 32/128 = 0.25
    _, b = _breakdown(gt_file, results)
    _only(b, "loc")
    assert type_name(int(b.classified.det_type[1])) == "loc"
    assert b.per_class[7]["counts"]["loc"] == 1 and b.per_class[3]["counts"]["loc"] == 0
    assert b.per_class[7]["dAP50"]["loc"] > 0 and b.per_class[3]["dAP50"]["loc"] == 0
    assert b.per_size["medium"]["counts"]["loc"] == 1  # the object's 80 x 80


def test_swapped_label_is_a_classification_error(gt_file):
    results = _perfect()
    results[3]["category_id"] = 7  # a large "a" called "b"
    _, b = _breakdown(gt_file, results)
    _only(b, "cls")
    assert b.per_size["large"]["counts"]["cls"] == 1
    assert b.per_class[7]["counts"]["cls"] == 1  # counted for the predicted class


def test_duplicate_above_another_true_positive(gt_file):
    results = _perfect()
    dup = {**results[0], "bbox": [12, 10, 40, 40], "score": 0.5}  # IoU 0.9 with object 1
    results.append(dup)
    results[2]["score"], results[3]["score"] = 0.4, 0.3  # now the duplicate outranks two TPs
    _, b = _breakdown(gt_file, results)
    _only(b, "dupe")


def test_lowest_scoring_duplicate_costs_nothing(gt_file):
    results = [*_perfect(), {**_perfect()[0], "bbox": [12, 10, 40, 40], "score": 0.01}]
    _, b = _breakdown(gt_file, results)
    assert b.counts["dupe"] == 1 and b.dap["dupe"] == 0.0 and b.map_base == 1.0


def test_box_on_background(gt_file):
    results = [
        *_perfect(),
        {"image_id": 1, "category_id": 3, "bbox": [150, 5, 30, 30], "score": 0.99},
    ]
    _, b = _breakdown(gt_file, results)
    _only(b, "bkg")
    assert b.per_size["small"]["counts"]["bkg"] == 1  # the detection's 30 x 30


def test_wrong_class_and_loose_box_is_both(gt_file):
    results = _perfect()
    results[1].update(category_id=3, bbox=[148, 100, 80, 80])  # IoU 0.25 with a "b"
    _, b = _breakdown(gt_file, results)
    # the "b" object is missed (a "both" error does not claim it) and the box is a "both"
    assert b.counts == {**dict.fromkeys(ERROR_TYPES, 0), "both": 1, "miss": 1}
    assert b.dap["cls"] == b.dap["loc"] == b.dap["dupe"] == b.dap["bkg"] == 0.0
    assert b.dap["both"] > 0 and b.dap["miss"] > 0
    assert b.fixed_all == pytest.approx(1.0, abs=1e-12)


def test_dropped_objects_are_missed(gt_file):
    results = _perfect()
    del results[4], results[0]
    _, b = _breakdown(gt_file, results)
    _only(b, "miss", count=2)
    assert b.per_size["small"]["counts"]["miss"] == 1
    assert b.per_size["medium"]["counts"]["miss"] == 1


def test_everything_at_once_closes_the_gap(gt_file):
    results = _perfect()
    results[1]["bbox"][0] += 48  # loc
    results[3]["category_id"] = 7  # cls
    del results[5]  # miss
    results.append({"image_id": 1, "category_id": 3, "bbox": [150, 5, 30, 30], "score": 0.99})
    scores, b = _breakdown(gt_file, results, COCO_THRESHOLDS)
    assert b.counts == {**dict.fromkeys(ERROR_TYPES, 0), "loc": 1, "cls": 1, "bkg": 1, "miss": 1}
    assert b.map_base == scores.stats["mAP50"]  # the same pycocotools numbers, exactly
    assert b.map_avg == pytest.approx(scores.stats["mAP50-95"], abs=1e-12)
    assert b.fixed_all == pytest.approx(1.0, abs=1e-12)
    gap = 1.0 - b.map_base
    assert all(b.dap[t] > 0 for t in ("loc", "cls", "bkg", "miss"))
    # each type explains a part of the gap; together (fixed at once) they explain all of it
    assert max(b.dap.values()) < gap
    d = b.to_dict(["a", "b"], [3, 7])
    assert d["gap50"] == pytest.approx(gap) and d["mAP50_all_fixed"] == pytest.approx(1.0)
    assert [r["name"] for r in d["per_class"]] == ["a", "b"]
    assert json.loads(json.dumps(d)) == d


def test_a_ground_truth_category_the_model_lacks_is_named_not_a_crash(tmp_path, gt_file):
    # kwcoco's exports declare an unused "background" category 0; the model knows ids 3 and 7
    doc = json.loads(gt_file.read_text())
    doc["categories"] = [{"id": 0, "name": "background"}, *doc["categories"]]
    path = tmp_path / "with_background.json"
    path.write_text(json.dumps(doc))
    _, b = _breakdown(path, _perfect())
    rows = b.to_dict(["a", "b"], [3, 7])["per_class"]
    assert [(r["name"], r["category_id"]) for r in rows] == [
        ("category 0 (not a model class)", 0), ("a", 3), ("b", 7)
    ]  # fmt: skip


def test_a_localisation_error_counts_at_every_threshold_it_fails(gt_file):
    results = _perfect()
    results[0]["bbox"][0] += 10  # 40 px wide: IoU 30/50 = 0.6: a TP at 0.5, loc from 0.65
    _, b = _breakdown(gt_file, results, COCO_THRESHOLDS)
    assert b.counts["loc"] == 0 and b.dap["loc"] == 0.0
    assert b.dap_avg["loc"] > 0 and b.dap_avg["cls"] == 0.0
    assert b.dap_avg["loc"] == pytest.approx(1.0 - b.map_avg, abs=1e-12)


def test_unknown_threshold_is_refused(gt_file):
    scores = coco_evaluate(gt_file, _perfect())
    with pytest.raises(ValueError, match=r"0\.42"):
        error_breakdown(scores.cocoeval, (0.42,))


def _fresh_precision(gt_file, m, fix, t):
    """pycocotools from scratch on the fixed detections and objects, at one IoU."""
    dataset = json.loads(gt_file.read_text())
    dataset["annotations"] = [a for a in dataset["annotations"] if a["id"] not in fix.gone]
    coco = COCO()
    coco.dataset = dataset
    dts = [d for pair, d_list in m.ev._dts.items() if pair not in fix.changes for d in d_list]
    dts += [d for _, d_list in fix.changes.values() for d in d_list]
    results = [{k: d[k] for k in ("image_id", "category_id", "bbox", "score")} for d in dts]
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.params.iouThrs = np.array([t])
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][0, :, :, :, -1]


@pytest.mark.parametrize("seed", [0, 1])
def test_rescoring_equals_pycocotools_from_scratch(tmp_path, seed):
    """Many overlapping boxes, > 100 per image and class: every fix, both ways, same numbers."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 300, "height": 300} for i in (1, 2, 3)]
    anns, results = [], []
    for i in (1, 2, 3):
        for _ in range(8):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(8, 110, 2)
            cat = int(rng.choice([3, 7]))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.1)})  # fmt: skip
        for _ in range(230):  # > 100 per image and class: pycocotools keeps 100
            a = anns[int(rng.integers(len(anns)))]
            jitter = rng.normal(0, 0.25, 4) * np.array(a["bbox"])[[2, 3, 2, 3]]
            box = (np.array(a["bbox"]) + jitter).clip(1).tolist()
            cat = a["category_id"] if rng.random() < 0.7 else int(rng.choice([3, 7]))
            results.append({"image_id": i, "category_id": cat, "bbox": box,
                            "score": float(rng.uniform())})  # fmt: skip
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    ev = coco_evaluate(gt_file, results).cocoeval
    m = _Matching(ev)
    ious = _image_ious(m)
    for ti in (0, 5):
        c = classify(m, ious, ti)
        sliced = _sliced(ev, ti)
        t = float(ev.params.iouThrs[ti])
        for types in [{e} for e in ERROR_TYPES] + [set(ERROR_TYPES)]:
            fix = _fix(m, c, types)
            mine = rescore(m, sliced, ti, fix, 4)
            assert np.array_equal(mine, _fresh_precision(gt_file, m, fix, t)), (ti, types)
    assert c.det_type.tolist().count(TP) > 0 and (c.det_type > 0).sum() > 50

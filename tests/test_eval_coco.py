"""pycocotools' traps: annotation id 0, missing area/iscrowd, mutated results, unknown images."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

import detkit.eval.coco as coco_module
from detkit.eval import coco_evaluate, ground_truth_by_image, load_coco_gt
from detkit.eval.coco import DetTable, accumulate, matches_at

CATS = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]


def _write(path, anns, images=None):
    images = images or [
        {"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 100} for i in (1, 2)
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    return path


def _anns(first_id=0, area=True, crowd=True):
    boxes = [(1, 3, [10, 10, 40, 30]), (1, 7, [100, 20, 50, 50]), (2, 3, [5, 5, 60, 60])]
    out = []
    for k, (image, cat, bbox) in enumerate(boxes):
        a = {"id": first_id + k, "image_id": image, "category_id": cat, "bbox": bbox}
        if area:
            a["area"] = bbox[2] * bbox[3]
        if crowd:
            a["iscrowd"] = 0
        out.append(a)
    return out


def _perfect(anns):
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in anns
    ]


def _raw_pycocotools(ann_file, results):
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt := COCO(str(ann_file)), gt.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_annotation_ids_from_zero_are_renumbered_in_a_copy(tmp_path):
    anns = _anns(first_id=0)
    path = _write(tmp_path / "gt.json", anns)
    before = path.read_bytes()
    # The trap is real: raw pycocotools scores a perfect prediction below 1 with id 0.
    assert _raw_pycocotools(path, _perfect(anns))[0] < 0.99
    scores = coco_evaluate(path, _perfect(anns))
    assert scores.stats["mAP50-95"] == pytest.approx(1.0)
    assert any("renumbered" in f for f in scores.fixes)
    assert path.read_bytes() == before  # the user's file is never rewritten


def test_missing_area_and_iscrowd_are_filled(tmp_path):
    full = _write(tmp_path / "full.json", _anns(first_id=1))
    bare = _write(tmp_path / "bare.json", _anns(first_id=1, area=False, crowd=False))
    results = _perfect(_anns())
    results[1]["bbox"] = [104, 22, 50, 44]  # one imperfect box, so numbers are not all 1
    stats_bare = coco_evaluate(bare, results).stats
    assert stats_bare == coco_evaluate(full, results).stats
    assert 0 < stats_bare["mAP50-95"] < 1
    coco, fixes = load_coco_gt(bare)
    assert {"area", "iscrowd"} <= set(coco.anns[1]) and len(fixes) == 2


def test_a_repair_is_said_once_however_often_the_file_is_scored(tmp_path, caplog):
    # a training run scores its validation file every epoch: "filled 'iscrowd'" once, not per epoch
    bare = _write(tmp_path / "bare.json", _anns(first_id=1, crowd=False))
    other = _write(tmp_path / "other.json", _anns(first_id=1, crowd=False))
    with caplog.at_level(logging.INFO, logger="detkit.eval.coco"):
        for _ in range(3):
            assert load_coco_gt(bare)[1] == ["filled 'iscrowd' = 0 for 3 annotations"]
        coco_evaluate(bare, _perfect(_anns()))
        load_coco_gt(other)  # another file is another message
    said = [r.getMessage() for r in caplog.records if "iscrowd" in r.getMessage()]
    assert said == [
        f"{bare}: filled 'iscrowd' = 0 for 3 annotations (in memory; the original is unchanged)",
        f"{other}: filled 'iscrowd' = 0 for 3 annotations (in memory; the original is unchanged)",
    ]


def test_clean_files_are_not_touched(tmp_path):
    _, fixes = load_coco_gt(_write(tmp_path / "gt.json", _anns(first_id=1)))
    assert fixes == []


def test_results_are_not_mutated_and_bad_ones_refused(tmp_path):
    path = _write(tmp_path / "gt.json", _anns(first_id=1))
    results = _perfect(_anns())
    frozen = copy.deepcopy(results)
    coco_evaluate(path, results)
    assert results == frozen  # loadRes would have added id, area and segmentation
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_evaluate(path, [{**results[0], "image_id": 99}])
    with pytest.raises(ValueError, match="finite"):
        coco_evaluate(path, [{**results[0], "bbox": [1, 2, math.inf, 3]}])


def test_per_class_ap(tmp_path):
    path = _write(tmp_path / "gt.json", _anns(first_id=1))
    only_a = [r for r in _perfect(_anns()) if r["category_id"] == 3]
    scores = coco_evaluate(path, only_a)
    assert scores.per_class[3]["AP50-95"] == pytest.approx(1.0)
    assert scores.per_class[7]["AP50-95"] == 0.0
    assert scores.stats["mAP50-95"] == pytest.approx(0.5)
    empty = coco_evaluate(path, [])
    assert empty.per_class == {3: {"AP50-95": 0.0, "AP50": 0.0}, 7: {"AP50-95": 0.0, "AP50": 0.0}}


def test_ground_truth_by_image_is_xyxy_with_contiguous_labels(tmp_path):
    anns = _anns(first_id=1)
    anns.append({"id": 9, "image_id": 2, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 1})
    coco, _ = load_coco_gt(_write(tmp_path / "gt.json", anns))
    truth = ground_truth_by_image(coco, cat_ids=[3, 7])
    boxes, labels, crowd = truth[2]
    assert boxes.tolist() == [[5, 5, 65, 65], [0, 0, 10, 10]]
    assert labels.tolist() == [0, 1] and crowd.tolist() == [False, True]


def test_ground_truth_files_are_read_by_the_dataset_readers_rules(tmp_path):
    path = _write(tmp_path / "gt.json", _anns(first_id=1))
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # written by a Windows tool
    assert load_coco_gt(bom)[0].getImgIds() == [1, 2]
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(ValueError, match=r"broken\.json line 2 column 12: malformed JSON"):
        load_coco_gt(broken)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_coco_gt(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_coco_gt(tmp_path / "list.json")


def _random_scene(seed: int) -> tuple[dict, list[dict]]:
    """Ground truth of every size range with crowd objects, and detections near and far from
    them with tied scores, one image holding more than 100 of one class."""
    rng = np.random.default_rng(seed)
    images = [{"id": 10 + i, "file_name": f"{i}.jpg", "width": 300, "height": 200}
              for i in range(11)]  # fmt: skip
    anns, results = [], []
    for img in images:
        for _ in range(int(rng.integers(0, 12))):
            w, h = (float(v) for v in rng.uniform(3, 160, 2))
            x, y = float(rng.uniform(0, 300 - w)), float(rng.uniform(0, 200 - h))
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "area": w * h,
                         "category_id": int(rng.choice([3, 7])), "bbox": [x, y, w, h],
                         "iscrowd": int(rng.random() < 0.1)})  # fmt: skip
    for a in anns:
        for _ in range(int(rng.integers(0, 4))):
            box = (np.array(a["bbox"]) * rng.uniform(0.8, 1.2, 4)).round(2).tolist()
            cat = a["category_id"] if rng.random() < 0.8 else 10 - a["category_id"]
            results.append({"image_id": a["image_id"], "category_id": cat, "bbox": box,
                            "score": float(rng.integers(1, 20) / 20)})  # fmt: skip
    for k in range(130):  # image 10, class 3: beyond pycocotools' 100 per image and class
        results.append({"image_id": 10, "category_id": 3, "score": float(rng.integers(1, 9) / 10),
                        "bbox": [float(k % 30 * 9), float(k // 30 * 35), 20.0, 30.0]})  # fmt: skip
    order = rng.permutation(len(results))
    return {"images": images, "annotations": anns, "categories": CATS}, [results[i] for i in order]


def test_chunks_hold_at_most_their_images_and_detections(monkeypatch: pytest.MonkeyPatch) -> None:
    # pycocotools' objects cost ~2 kB a detection: 500 images of 300 detections (max_det) in
    # one chunk held 1.2 GB at 1.5 M detections, so a chunk is bounded by detections too
    monkeypatch.setattr(coco_module, "CHUNK_IMAGES", 4)
    monkeypatch.setattr(coco_module, "CHUNK_DETECTIONS", 10)
    per_image = [3, 0, 4, 12, 1, 1, 1, 1, 1, 1, 0, 5]  # image 3 alone is over the budget
    ids = [10 * (i + 1) for i in range(len(per_image))]
    table = DetTable(np.repeat(ids, per_image), np.ones(sum(per_image), np.int64),
                     np.zeros((sum(per_image), 4)), np.ones(sum(per_image)))  # fmt: skip
    chunks = coco_module._chunks(ids, table, whole=False)
    assert chunks == [(0, 3), (3, 4), (4, 8), (8, 12)]
    assert coco_module._chunks(ids, table, whole=True) == [(0, 12)]


def _cocoeval_outcome(ev: COCOeval, iou: float) -> np.ndarray:
    """Each results entry's outcome read off pycocotools' own per-image evaluations (area "all"):
    1 true positive, 0 false positive, -1 not scored."""
    ti = [round(float(t), 4) for t in ev.params.iouThrs].index(iou)
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


@pytest.mark.parametrize("chunk", [("CHUNK_IMAGES", 3), ("CHUNK_DETECTIONS", 25)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_flat_matching_and_accumulation_equal_pycocotools_to_the_bit(
    seed: int, chunk: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the scaled path matches a few images at a time and accumulates from flat arrays; every
    # number must be pycocotools' own (ties in score broken alike, the 101st detection of an
    # image and class dropped alike, crowd objects ignored alike, area ranges binned alike)
    gt, results = _random_scene(seed)
    monkeypatch.setattr(coco_module, *chunk)
    with contextlib.redirect_stdout(io.StringIO()):
        coco, _ = load_coco_gt(gt)
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for keep in (False, True):
        scores = coco_evaluate(gt, results, keep_eval=keep)
        assert list(scores.stats.values()) == [float(v) for v in ev.stats]
        precision, recall = accumulate(scores.matching, DetTable.from_results(results).scores,
                                       Params(iouType="bbox"))  # fmt: skip
        assert np.array_equal(precision, ev.eval["precision"])
        assert np.array_equal(recall, ev.eval["recall"])
        for iou in (0.5, 0.75):
            assert np.array_equal(
                matches_at(scores.matching, iou, len(results)), _cocoeval_outcome(ev, iou)
            )
        assert (scores.cocoeval is not None) == keep
    assert scores.summary.splitlines()[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95")


def test_a_results_table_writes_the_list_it_holds(tmp_path) -> None:
    _, results = _random_scene(0)
    table = DetTable.from_results(results)
    written = json.loads(table.write_json(tmp_path / "r.json", chunk=7).read_text())
    assert written == results and table.entries(3, 5) == results[3:5]

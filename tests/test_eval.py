"""COCO evaluation: perfect predictions score 1.0; a small case computed by hand."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detkit.data import write_coco
from detkit.eval import coco_evaluate
from detkit.inference.predict import Detections


@pytest.fixture
def gt_file(tmp_path):
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(6):
        images.append({"id": 100 + i, "file_name": f"{i}.jpg", "width": 320, "height": 240})
        for _ in range(3):
            x, y = rng.uniform(0, 200), rng.uniform(0, 150)
            w, h = rng.uniform(10, 100), rng.uniform(10, 80)
            anns.append(
                {
                    "image_id": 100 + i,
                    "category_id": int(rng.choice([3, 7, 42])),
                    "bbox": [x, y, w, h],
                }
            )
    cats = [{"id": c, "name": n} for c, n in [(3, "a"), (7, "b"), (42, "c")]]
    path = tmp_path / "gt.json"
    write_coco(path, images, anns, cats)
    return path


def _perfect_results(gt_file):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt.dataset["annotations"]
    ]


def _stats_and_summary(gt_file, results):
    scores = coco_evaluate(gt_file, results)
    return scores.stats, scores.summary


def test_perfect_predictions_score_one(gt_file):
    stats, summary = _stats_and_summary(gt_file, _perfect_results(gt_file))
    assert stats["mAP50-95"] == pytest.approx(1.0)
    assert stats["mAP50"] == pytest.approx(1.0)
    assert "Average Precision" in summary


def test_a_hand_computed_case(tmp_path):
    # One image, one class, 2 ground-truth boxes (xywh): A = [0, 0, 10, 10], B = [20, 0, 10, 10].
    # Detections by score: d1 = A exactly (IoU 1), d2 on B with IoU 64 / 100 = 0.64, d3 on
    # background (IoU 0).
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}]
    anns = [{"image_id": 1, "category_id": 3, "bbox": b} for b in ([0, 0, 10, 10], [20, 0, 10, 10])]
    path = write_coco(tmp_path / "gt.json", images, anns, [{"id": 3, "name": "a"}])
    dets = [([0, 0, 10, 10], 0.9), ([20, 0, 10, 6.4], 0.8), ([50, 50, 10, 10], 0.7)]
    results = [{"image_id": 1, "category_id": 3, "bbox": b, "score": s} for b, s in dets]
    stats = coco_evaluate(path, results).stats
    # IoU thresholds 0.50, 0.55, 0.60: TP TP FP -> precision 1, 1, 2/3 at recall .5, 1, 1; the
    # envelope is 1 at every one of the 101 recall points: AP = 1.
    # Thresholds 0.65 ... 0.95 (7 of them): TP FP FP -> recall stops at 0.5; precision 1 at the
    # 51 recall points 0.00 ... 0.50 and 0 at the other 50: AP = 51 / 101.
    assert stats["mAP50"] == pytest.approx(1.0)
    assert stats["mAP75"] == pytest.approx(51 / 101)
    assert stats["mAP50-95"] == pytest.approx((3 * 1 + 7 * 51 / 101) / 10)  # 0.6535
    assert stats["mAP_small"] == stats["mAP50-95"]  # both boxes are "small" (area 100 < 32^2)
    assert stats["mAP_medium"] == stats["mAP_large"] == -1  # no such objects
    # Recall: both found at 3 thresholds, one at 7: (3 * 1 + 7 * 0.5) / 10; with one detection
    # per image only d1 counts: 0.5 everywhere.
    assert stats["AR100"] == stats["AR10"] == pytest.approx(0.65)
    assert stats["AR1"] == pytest.approx(0.5)


def test_no_detections_is_zero_not_an_exception(gt_file):
    stats, summary = _stats_and_summary(gt_file, [])
    assert all(v == 0 for v in stats.values())
    assert "no detections" in summary


def test_nan_scores_are_refused(gt_file):
    results = _perfect_results(gt_file)
    results[0]["score"] = math.nan
    with pytest.raises(ValueError, match="finite"):
        coco_evaluate(gt_file, results)


def test_detections_to_coco_maps_labels_back_and_uses_xywh():
    d = Detections(
        torch.tensor([[10.0, 20.0, 40.0, 80.0]]),
        torch.tensor([0.9]),
        torch.tensor([2]),
        ["a", "b", "c"],
    )
    (entry,) = d.to_coco(image_id=5, cat_ids=[3, 7, 42])
    assert entry == {
        "image_id": 5,
        "category_id": 42,
        "bbox": [10.0, 20.0, 30.0, 60.0],
        "score": 0.9,
    }
    assert "c" in repr(d) and len(d) == 1


class _Oracle:
    """A detector stand-in that returns each image's ground truth, in the eval loader's order."""

    def __init__(self, source):
        self.source, self.next = source, 0
        self.class_names, self.cat_ids = source.class_names, source.cat_ids

    def detect_batch(self, images, infos):
        out = []
        for _ in infos:
            boxes, labels = self.source.targets(self.next)
            self.next += 1
            scores = torch.linspace(0.9, 0.5, len(labels))
            out.append(Detections(torch.as_tensor(boxes), scores, torch.as_tensor(labels), []))
        return out


def test_a_split_is_evaluated_in_memory_like_from_its_file(tiny_formats, tmp_path):
    from detkit.data import (
        DetectionDataset,
        VocDataset,
        build_loader,
        build_transforms,
        ground_truth,
        ground_truth_file,
    )
    from detkit.eval import evaluate_detector

    split = VocDataset(tiny_formats["voc"], ["val"], ["circle", "square", "triangle", "star"],
                       cache_dir=tmp_path)  # fmt: skip
    loader = build_loader(
        DetectionDataset(split, build_transforms(64, train=False)), 2, False, 0, 0
    )
    gt = ground_truth(split)  # VOC: a COCO dict, nothing written
    assert isinstance(gt, dict) and not (tmp_path / "gt").exists()
    in_memory = evaluate_detector(_Oracle(split), loader, gt, progress=False, detailed=True)
    assert not (tmp_path / "gt").exists()
    from_file = evaluate_detector(
        _Oracle(split), loader, ground_truth_file(split), progress=False, detailed=True
    )
    assert in_memory.stats == from_file.stats and in_memory.stats["mAP50-95"] == pytest.approx(1.0)
    assert (in_memory.confusion == from_file.confusion).all()

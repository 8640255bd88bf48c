"""COCO evaluation: perfect predictions score 1.0; detkit's numbers are pycocotools' own."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.data import write_coco
from detkit.eval import STAT_NAMES, coco_metrics
from detkit.predict import Detections


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


def test_perfect_predictions_score_one(gt_file):
    stats, summary = coco_metrics(gt_file, _perfect_results(gt_file))
    assert stats["mAP50-95"] == pytest.approx(1.0)
    assert stats["mAP50"] == pytest.approx(1.0)
    assert "Average Precision" in summary


def test_numbers_equal_pycocotools_own(gt_file):
    rng = np.random.default_rng(1)
    results = []
    for r in _perfect_results(gt_file):
        x, y, w, h = r["bbox"]
        jitter = rng.normal(0, 4, 4)
        results.append(
            {
                **r,
                "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                "score": float(rng.uniform(0.1, 1)),
            }
        )
    stats, _ = coco_metrics(gt_file, results)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for name, value in zip(STAT_NAMES, ev.stats, strict=True):
        assert stats[name] == pytest.approx(float(value), abs=1e-9)
    assert 0 < stats["mAP50-95"] < 1


def test_no_detections_is_zero_not_an_exception(gt_file):
    stats, summary = coco_metrics(gt_file, [])
    assert all(v == 0 for v in stats.values())
    assert "no detections" in summary


def test_nan_scores_are_refused(gt_file):
    results = _perfect_results(gt_file)
    results[0]["score"] = math.nan
    with pytest.raises(ValueError, match="finite"):
        coco_metrics(gt_file, results)


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

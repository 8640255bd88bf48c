"""What a run tells (#22 item 4): precision and recall per epoch in the console and
metrics.csv; when it finishes, the per-class table and the evaluation of best.pt (PR, confusion,
errors, thresholds) in the run folder; labels.png at the start; no pictures with plots=false."""

from __future__ import annotations

import csv
import json
import logging
import re

import numpy as np
import pytest
from matplotlib.image import imread

import detkit
from detkit.config import load_config
from detkit.eval.runner import score_predictions
from detkit.inference.predict import Detector
from detkit.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

PLOTS = ("labels.png", "results.png", "pr_curves.png", "confusion_matrix.png", "errors.png",
         "pr_f1.png", "calibration.png")  # fmt: skip


def _cfg(root, project, *extra: str):
    return load_config(
        overrides=[
            f"root={root}", "num_train=8", "num_val=4", "epochs=2", "batch=4", "img_size=64",
            "workers=0", "device=cpu", f"project={project}", "cm_conf=0.01", *extra,
        ]
    )  # fmt: skip


def test_a_run_reports_p_r_per_epoch_and_evaluates_best_pt(tiny_shapes, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="detkit"):
        run = detkit.train(_cfg(tiny_shapes, tmp_path))
    log = caplog.text
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 2 and {"precision", "recall", "mAP50", "mAP50-95"} <= set(rows[0])
    for row in rows:  # the console says what metrics.csv holds
        line = (
            f"epoch {row['epoch']}/2: P {float(row['precision']):.3f}  R {float(row['recall']):.3f}"
        )
        assert line in log, (line, log)
    # the end: best.pt (slim, as users get it) evaluated in detail, exactly as `detkit eval`
    summary = json.loads((run / "best_metrics.json").read_text())
    report = detkit.evaluate(run / "best.pt", progress=False, store_conf=False)
    for key in ("mAP50", "mAP50-95", "AR100"):
        assert summary[key] == pytest.approx(report.result.stats[key], abs=1e-9), key
    assert summary["per_class"] == json.loads(json.dumps(report.result.class_rows()))
    assert summary["epoch"] == load_checkpoint(run / "best.pt")["best_epoch"]
    assert "errors" in summary and "confusion_matrix" in summary
    table = log[log.index("best.pt (epoch") :]
    assert all(name in table for name in ("circle", "square", "triangle", "star", "AP50-95"))
    assert re.search(r"errors at IoU 0\.5 .*\n  cls ", table)
    best = summary["thresholds"]["best_f1"]
    assert Detector.from_checkpoint(run / "best.pt", device="cpu", conf="best").conf == best["conf"]
    for png in PLOTS:
        pixels = imread(run / png)
        assert pixels.ndim == 3 and pixels.std() > 0.05, png
    assert not (run / "predictions.json").exists()  # eval folders hold those


def test_plots_false_draws_nothing_but_still_reports(tiny_shapes, tmp_path):
    run = detkit.train(_cfg(tiny_shapes, tmp_path, "plots=false", "epochs=1", "quiet=true"))
    assert not [p.name for p in run.glob("*.png")]
    assert json.loads((run / "best_metrics.json").read_text())["files"] == {
        "metrics": "best_metrics.json"
    }


class _Names:
    class_names, cat_ids = ["a"], [7]


def test_precision_and_recall_are_the_f1_optimal_point_by_hand():
    """3 objects; detections by score: hit, hit, miss, hit. Keeping the best k: F1 = 0.5, 0.8,
    0.667, 0.857, so all four are kept: P = 3/4, R = 1."""
    gt = {
        "images": [{"id": 1, "file_name": "x.jpg", "width": 100, "height": 100}],
        "categories": [{"id": 7, "name": "a"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 7, "bbox": [30 * i, 0, 20, 20],
             "area": 400, "iscrowd": 0}
            for i in range(3)
        ],
    }  # fmt: skip
    boxes = [[0, 0, 20, 20], [30, 0, 50, 20], [0, 60, 20, 80], [60, 0, 80, 20]]  # xyxy
    arrays = (np.array(boxes, np.float32), np.array([0.9, 0.8, 0.7, 0.6]), np.zeros(4, int))
    result = score_predictions({1: arrays}, _Names(), gt, 1.0)
    assert result.operating_point() == {"precision": 0.75, "recall": 1.0}

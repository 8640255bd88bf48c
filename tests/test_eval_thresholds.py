"""Deployable thresholds: P/R/F1 against the score threshold, the F1-optimal one, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detkit.eval.thresholds import threshold_report
from detkit.models.checkpoint import best_conf


def _report(scores, tp, num_gt, labels=None, names=("a",)):
    scores, tp = np.array(scores, float), np.array(tp, bool)
    labels = np.zeros(len(scores), int) if labels is None else np.array(labels)
    return threshold_report(scores, labels, tp, np.array(num_gt), list(names))


def test_best_f1_threshold_and_calibration_by_hand():
    r = _report([0.92, 0.81, 0.74, 0.63], [1, 0, 1, 0], [3])
    # kept 1..4: precision 1, 1/2, 2/3, 1/2; recall 1/3, 1/3, 2/3, 2/3; F1 .5, .4, .667, .571
    best = r.best["all"]
    assert best.f1 == pytest.approx(2 / 3) and best.precision == pytest.approx(2 / 3)
    assert best.recall == pytest.approx(2 / 3)
    assert best.conf == pytest.approx((0.74 + 0.63) / 2)  # keeps 0.74 (score > conf), not 0.63
    assert r.best[0] == best  # one class: the same point
    at = {round(t, 3): i for i, t in enumerate(r.grid)}
    assert r.curves["all"]["precision"][at[0.7]] == pytest.approx(2 / 3)
    assert r.curves["all"]["recall"][at[0.9]] == pytest.approx(1 / 3)
    assert r.curves["all"]["f1"][at[0.0]] == pytest.approx(4 / 7)
    assert math.isnan(r.curves["all"]["precision"][at[0.95]])  # nothing kept
    # one detection per bin: ECE = mean |tp - score| = (0.08 + 0.81 + 0.26 + 0.63) / 4
    assert r.ece == pytest.approx(0.445)
    assert r.bin_count.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert r.bin_acc[9] == 1.0 and r.bin_conf[6] == pytest.approx(0.63)


def test_tied_scores_are_one_threshold():
    r = _report([0.8, 0.8], [1, 0], [1])
    assert r.best["all"].f1 == pytest.approx(2 / 3)  # both kept: P 1/2, R 1
    assert r.best["all"].conf == pytest.approx(0.4)


def test_per_class_thresholds_differ_and_classes_without_objects_are_left_out():
    r = _report(
        [0.9, 0.3, 0.2, 0.5], [1, 1, 0, 0], [2, 0, 0], labels=[0, 0, 0, 1], names=("a", "b", "c")
    )
    assert r.best[0].conf == pytest.approx(0.25) and r.best[0].f1 == pytest.approx(1.0)
    assert 1 not in r.best and 2 not in r.best  # no objects: no recall, no F1
    d = r.to_dict()
    assert set(d["best_f1_per_class"]) == {"a"} and d["iou"] == 0.5


def test_conf_best_needs_a_stored_threshold(tmp_path):
    with pytest.raises(ValueError, match="detkit eval"):
        best_conf({"model": {}}, tmp_path / "w.pt")
    assert best_conf({"thresholds": {"conf": 0.3125}}, "w.pt") == 0.3125


def test_conf_best_reads_the_record_beside_the_checkpoint_and_refuses_a_changed_one(tmp_path):
    from test_predict import make_checkpoint

    from detkit.inference.predict import Detector
    from detkit.models.checkpoint import load_checkpoint, save_checkpoint, write_thresholds

    weights = make_checkpoint(tmp_path / "best.pt")
    before = weights.read_bytes()
    assert write_thresholds(weights, {"conf": 0.3125}) == tmp_path / "best.thresholds.json"
    assert weights.read_bytes() == before  # recorded beside, never inside
    assert Detector.from_checkpoint(weights, device="cpu", conf="best").conf == 0.3125
    save_checkpoint({**load_checkpoint(weights), "epoch": 5}, weights)  # trained on since
    with pytest.raises(ValueError, match=r"measured on another best\.pt"):
        Detector.from_checkpoint(weights, device="cpu", conf="best")

"""Box cleaning and the data report: every box case with its count, errors that name places."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from detkit.data.check import DataError, DataReport, clean_box_rows, data_report, format_report

NAN = float("nan")


def clean_boxes(
    boxes: np.ndarray, labels: np.ndarray, height: int, width: int, report: DataReport, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """One image's boxes through the split-wide cleaner."""
    owner = np.zeros(len(labels), np.int64)
    return clean_box_rows(
        boxes, labels, owner, np.array([[height, width]]), report, lambda _: where
    )


# (box xyxy in a 100 x 80 (w x h) image, kept box or None, issue counted)
CASES = [
    ([10, 10, 30, 40], [10, 10, 30, 40], None),
    ([NAN, 10, 30, 40], None, "box_nan"),
    ([10, 10, float("inf"), 40], None, "box_nan"),
    ([10, 10, 10, 40], None, "box_empty"),  # zero width
    ([30, 10, 10, 40], None, "box_empty"),  # negative width
    ([10, 50, 30, 40], None, "box_empty"),  # negative height
    ([110, 10, 130, 40], None, "box_outside"),
    ([-30, -20, -1, 40], None, "box_outside"),
    ([90, 70, 120, 95], [90, 70, 100, 80], "box_clipped"),
    ([-5, 10, 30.5, 40], [0, 10, 30.5, 40], "box_clipped"),
    ([99.5, 10, 130, 40], None, "box_tiny"),  # 0.5 px left inside
    ([10, 10, 10.5, 40], None, "box_tiny"),
]


@pytest.mark.parametrize(("box", "kept", "issue"), CASES)
def test_clean_boxes_cases(box: list[float], kept: list[float] | None, issue: str | None) -> None:
    report = DataReport(name="t")
    boxes = np.array([box, [50, 50, 60, 60]], dtype=np.float64)  # plus one good box
    before = boxes.copy()
    keep, clean = clean_boxes(boxes, np.array([3, 1]), 80, 100, report, "a.json annotation 7")
    np.testing.assert_array_equal(boxes, before)  # input not modified
    assert clean.dtype == np.float32 and keep.dtype == np.int64
    if kept is None:
        assert keep.tolist() == [1]
        np.testing.assert_array_equal(clean, [[50, 50, 60, 60]])
    else:
        assert keep.tolist() == [0, 1]
        np.testing.assert_allclose(clean[0], kept)
    counts = {k: v.count for k, v in report.issues.items()}
    assert counts == ({issue: 1} if issue else {})
    if issue:
        assert report.issues[issue].examples == ["a.json annotation 7"]


def test_exact_duplicates_dropped_but_same_box_other_class_kept() -> None:
    report = DataReport()
    boxes = np.array([[1, 1, 5, 5], [1, 1, 5, 5], [1, 1, 5, 5], [2, 2, 6, 6]], np.float64)
    keep, _ = clean_boxes(boxes, np.array([0, 0, 2, 0]), 10, 10, report, "x")
    assert keep.tolist() == [0, 2, 3]
    assert report.count("box_duplicate") == 1


def test_clean_boxes_empty_input() -> None:
    keep, clean = clean_boxes(np.zeros((0, 4)), np.zeros(0, np.int64), 10, 10, DataReport(), "x")
    assert keep.shape == (0,) and clean.shape == (0, 4)


def test_invalid_entries_raise_with_places_unless_skipped() -> None:
    report = DataReport(name="train (yolo)")
    report.add("box_clipped", "a.txt")
    report.raise_if_invalid()  # repairs are not errors
    for line in range(1, 9):
        report.add("ann_unknown_class", f"labels/a.txt line {line}: class 7 not in 0..3")
    report.add("ann_malformed", "labels/b.txt line 2: 4 columns")
    with pytest.raises(DataError) as err:
        report.raise_if_invalid()
    text = str(err.value)
    assert "train (yolo): 9 invalid entries" in text
    assert "labels/a.txt line 1: class 7" in text and "labels/b.txt line 2" in text
    assert "labels/a.txt line 6" not in text  # only the first few places are listed
    assert "skip_invalid=true" in text
    report.skip_invalid = True
    report.raise_if_invalid()
    with pytest.raises(KeyError):
        report.add("no_such_kind", "x")


def test_report_table_json_and_run_folder(tmp_path: Path) -> None:
    report = DataReport(name="val (voc)", images=5, kept=4, negatives=1, boxes=9, ignored=2)
    report.add("image_truncated", "JPEGImages/a.jpg: JPEG file ends early")
    report.add("box_clipped", "Annotations/b.xml", count=3)
    table = report.table()
    assert "val (voc): 4 of 5 images kept, 1 negatives" in table
    assert "2 crowd/difficult" in table
    assert "image truncated" in table and "skipped" in table and "JPEGImages/a.jpg" in table
    clean = DataReport(name="train (voc)", images=3, kept=3, boxes=4)
    assert "no problems found" in clean.table()
    assert report.changes_gt()  # a skipped image changes the ground truth
    assert not DataReport(issues={}).changes_gt()
    datasets = {"train": SimpleNamespace(report=clean), "val": SimpleNamespace(report=report)}
    text = data_report(datasets, tmp_path / "run")
    assert text == format_report([clean, report])
    assert (tmp_path / "run" / "data_report.txt").read_text().strip() == text
    doc = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert doc["val"]["issues"]["box_clipped"]["count"] == 3
    assert doc["val"]["issues"]["image_truncated"]["action"] == "skipped"

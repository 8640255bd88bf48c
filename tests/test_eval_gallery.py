"""Worst-images gallery: what is kept at the threshold, the error weight, the files written."""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from detkit.eval.errors import TP, Classified
from detkit.eval.gallery import image_errors, write_worst_images

BKG = 5  # 1 + ERROR_TYPES.index("bkg")


def _case():
    truth = {
        1: [
            {"id": 1, "bbox": [10, 10, 20, 20], "category_id": 3},
            {"id": 2, "bbox": [50, 50, 20, 20], "category_id": 3},
            {"id": 3, "bbox": [0, 0, 90, 90], "category_id": 3, "iscrowd": 1},
        ],
        2: [{"id": 4, "bbox": [5, 5, 30, 30], "category_id": 7}],
    }
    results = [
        {"image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "score": 0.9},  # tp of 1
        {"image_id": 1, "category_id": 3, "bbox": [70, 5, 10, 10], "score": 0.8},  # bkg
        {"image_id": 1, "category_id": 3, "bbox": [50, 50, 20, 20], "score": 0.1},  # tp of 2
        {"image_id": 2, "category_id": 7, "bbox": [5, 5, 30, 30], "score": 0.7},  # tp of 4
    ]
    c = Classified(
        det_type=np.array([TP, BKG, TP, TP], np.int8),
        target=np.array([1, 0, 2, 4]),
        matched={1, 2, 4},
        missed=[],
    )
    return c, results, truth


def test_kept_detections_their_types_and_the_weight():
    c, results, truth = _case()
    items = image_errors(c, results, truth, conf=0.5)
    one = items[1]
    assert [kind for *_, kind in one.dets] == ["tp", "bkg"]
    # object 2's only detection (0.1) is below the threshold: missed there; the crowd box is not
    assert len(one.missed) == 1 and one.missed[0].tolist() == [50, 50, 70, 70]
    assert len(one.truth) == 2
    assert one.weight == pytest.approx(0.8 + 1.0)
    assert one.counts() == {"tp": 1, "cls": 0, "loc": 0, "both": 0, "dupe": 0, "bkg": 1, "miss": 1}
    assert items[2].weight == 0.0 and items[2].counts()["tp"] == 1
    assert image_errors(c, results, truth, conf=0.05)[1].weight == pytest.approx(0.8)


def test_worst_images_are_written_worst_first(tmp_path):
    c, results, truth = _case()
    items = image_errors(c, results, truth, conf=0.5)
    image = np.full((100, 120, 3), 90, np.uint8)
    source = SimpleNamespace(
        image_ids=[2, 1],
        load=lambda i: SimpleNamespace(image=image, path=f"/data/img{[2, 1][i]}.jpg"),
    )
    paths = write_worst_images(items, source, {3: "a", 7: "b"}, tmp_path / "worst", 5, 0.5)
    assert [p.name for p in paths] == ["01_img1.png"]  # image 2 has no error: not drawn
    picture = cv2.imread(str(paths[0]))
    assert min(picture.shape[:2]) >= 640 and picture.std() > 10
    index = json.loads((tmp_path / "worst/index.json").read_text())
    assert index["conf"] == 0.5 and index["images"][0]["counts"]["bkg"] == 1
    assert index["images"][0]["weight"] == pytest.approx(1.8)
    assert write_worst_images(items, source, {}, tmp_path / "none", 0, 0.5) == []
    assert not (tmp_path / "none").exists()

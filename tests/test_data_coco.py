from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from detkit.data.coco import CocoDataset, read_image, write_coco


def _write_png(path: Path, height: int, width: int, rgb: tuple[int, int, int]) -> None:
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = rgb
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image[..., ::-1])


@pytest.fixture
def tiny_coco(tmp_path: Path) -> tuple[Path, Path]:
    """Hand-written COCO json: sparse category ids, crowd, negatives, odd boxes."""
    images_dir = tmp_path / "images"
    _write_png(images_dir / "a.png", 40, 60, (255, 0, 0))
    _write_png(images_dir / "b.png", 30, 20, (0, 255, 0))
    _write_png(images_dir / "sub" / "c.png", 50, 50, (0, 0, 255))
    doc = {
        "images": [
            {"id": 5, "file_name": "a.png", "height": 40, "width": 60},
            {"id": 2, "file_name": "b.png", "height": 30, "width": 20},
            {"id": 9, "file_name": "sub/c.png", "height": 50, "width": 50},
        ],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 42, "bbox": [30, 5, 25.5, 10], "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 1, "bbox": [0, 0, 60, 40], "iscrowd": 1},
            # partly outside the image: clipped to x2 = 60
            {"id": 4, "image_id": 5, "category_id": 1, "bbox": [50, 30, 20, 5], "iscrowd": 0},
            # degenerate (0.5 px wide): dropped, leaving image 9 a negative
            {"id": 5, "image_id": 9, "category_id": 7, "bbox": [3, 3, 0.5, 10], "iscrowd": 0},
        ],
        "categories": [
            {"id": 42, "name": "zebra"},
            {"id": 1, "name": "ant"},
            {"id": 7, "name": "moose"},
        ],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(doc))
    return ann_file, images_dir


def test_categories_become_contiguous_labels(tiny_coco: tuple[Path, Path]) -> None:
    dataset = CocoDataset(*tiny_coco)
    assert dataset.cat_ids == [1, 7, 42]
    assert dataset.class_names == ["ant", "moose", "zebra"]
    assert dataset.image_ids == [2, 5, 9]
    assert dataset.ann_file == tiny_coco[0]
    sample = dataset.load(dataset.image_ids.index(5))
    np.testing.assert_array_equal(sample.labels, [1, 2, 0])
    assert sample.labels.dtype == np.int64 and sample.boxes.dtype == np.float32
    assert [dataset.cat_ids[label] for label in sample.labels] == [7, 42, 1]
    expected = [[1, 2, 11, 22], [30, 5, 55.5, 15], [50, 30, 60, 35]]
    np.testing.assert_allclose(sample.boxes, expected)


def test_crowd_excluded_and_negatives_kept(tiny_coco: tuple[Path, Path]) -> None:
    dataset = CocoDataset(*tiny_coco)
    assert len(dataset) == 3
    for image_id in (2, 9):  # no annotations; only a degenerate one
        sample = dataset.load(dataset.image_ids.index(image_id))
        assert sample.boxes.shape == (0, 4) and sample.labels.shape == (0,)
        assert sample.boxes.dtype == np.float32 and sample.labels.dtype == np.int64


def test_load_decodes_rgb(tiny_coco: tuple[Path, Path]) -> None:
    dataset = CocoDataset(*tiny_coco)
    colours = {5: (255, 0, 0), 2: (0, 255, 0), 9: (0, 0, 255)}
    for index, image_id in enumerate(dataset.image_ids):
        sample = dataset.load(index)
        assert sample.image_id == image_id
        assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
        np.testing.assert_array_equal(sample.image[0, 0], colours[image_id])
    assert dataset.load(2).path.endswith("sub/c.png")
    with pytest.raises(IndexError):
        dataset.load(3)


@pytest.mark.parametrize("file_name", ["../../x.jpg", "sub/../../x.jpg", "/etc/passwd"])
def test_file_name_escaping_images_dir_is_refused(tmp_path: Path, file_name: str) -> None:
    ann_file = tmp_path / "ann.json"
    doc = {"images": [{"id": 1, "file_name": file_name, "height": 4, "width": 4}]}
    ann_file.write_text(json.dumps({**doc, "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match=re.escape(file_name)):
        CocoDataset(ann_file, tmp_path / "images")


def test_missing_and_corrupt_images_name_the_path(tmp_path: Path) -> None:
    images = [
        {"id": 1, "file_name": "missing.jpg", "height": 4, "width": 4},
        {"id": 2, "file_name": "corrupt.jpg", "height": 4, "width": 4},
    ]
    ann_file = write_coco(tmp_path / "ann.json", images, [], [{"id": 1, "name": "a"}])
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "corrupt.jpg").write_bytes(b"not a jpeg")
    dataset = CocoDataset(ann_file, tmp_path / "images")
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        dataset.load(0)
    with pytest.raises(ValueError, match=r"corrupt\.jpg"):
        dataset.load(1)
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        CocoDataset(tmp_path / "nope.json", tmp_path)
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "nothing.png")


def test_unknown_category_is_an_error(tmp_path: Path) -> None:
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 2, 2]}],
        "categories": [{"id": 1, "name": "a"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="category_id 3"):
        CocoDataset(tmp_path / "ann.json", tmp_path)


def test_write_coco_ids_area_iscrowd_and_round_trip(tmp_path: Path) -> None:
    images = [{"id": 3, "file_name": "a.png", "height": np.int64(40), "width": 60}]
    annotations: list[dict[str, Any]] = [
        {"id": 0, "image_id": 3, "category_id": 9, "bbox": np.array([1, 2, 10, 20], np.float32)},
        {"image_id": 3, "category_id": 9, "bbox": [20, 2, 4, 5], "iscrowd": 1, "area": 7.0},
        {"image_id": 3, "category_id": 9, "bbox": [30, 10, 5, 5]},
    ]
    before = repr(annotations)
    path = write_coco(tmp_path / "out" / "ann.json", images, annotations, [{"id": 9, "name": "x"}])
    assert repr(annotations) == before  # inputs untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["ann.json"]  # no temp left over
    doc = json.loads(path.read_text())
    assert [a["id"] for a in doc["annotations"]] == [1, 2, 3]
    assert [a["area"] for a in doc["annotations"]] == [200.0, 7.0, 25.0]
    assert [a["iscrowd"] for a in doc["annotations"]] == [0, 1, 0]
    _write_png(tmp_path / "img" / "a.png", 40, 60, (1, 2, 3))
    sample = CocoDataset(path, tmp_path / "img").load(0)
    np.testing.assert_allclose(sample.boxes, [[1, 2, 11, 22], [30, 10, 35, 15]])
    np.testing.assert_array_equal(sample.labels, [0, 0])


def test_write_coco_validates(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}]
    categories = [{"id": 1, "name": "a"}]
    bad = [
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]},
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1]},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1]},
    ]
    for ann in bad:
        with pytest.raises(ValueError):
            write_coco(tmp_path / "ann.json", images, [ann], categories)
    assert not (tmp_path / "ann.json").exists()

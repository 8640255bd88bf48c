from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from detkit.data.check import DataError
from detkit.data.coco import CocoDataset, read_image, write_coco
from detkit.data.groundtruth import ground_truth_file


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
    assert dataset.source_file == tiny_coco[0]
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


def test_missing_and_corrupt_images_are_skipped_and_counted(tmp_path: Path) -> None:
    images = [
        {"id": 1, "file_name": "missing.jpg", "height": 4, "width": 4},
        {"id": 2, "file_name": "corrupt.jpg", "height": 4, "width": 4},
        {"id": 3, "file_name": "good.png", "height": 20, "width": 30},
        {"id": 4, "file_name": "cut.jpg", "height": 200, "width": 300},
    ]
    anns = [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 2, 2]}]
    ann_file = write_coco(tmp_path / "ann.json", images, anns, [{"id": 1, "name": "a"}])
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "corrupt.jpg").write_bytes(b"not a jpeg")
    _write_png(tmp_path / "images" / "good.png", 20, 30, (1, 2, 3))
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "images" / "cut.jpg"), noise)
    data = (tmp_path / "images" / "cut.jpg").read_bytes()
    (tmp_path / "images" / "cut.jpg").write_bytes(data[: len(data) // 2])  # truncated
    dataset = CocoDataset(ann_file, tmp_path / "images", cache_dir=tmp_path / "cache")
    assert dataset.image_ids == [3] and len(dataset) == 1
    report = dataset.report
    assert report.count("image_missing") == 1 and report.count("image_unreadable") == 1
    assert report.count("image_truncated") == 1
    assert "missing.jpg" in report.issues["image_missing"].examples[0]
    assert (report.images, report.kept) == (4, 1)
    # Evaluation must not count the skipped image's boxes as missed: a cleaned copy.
    assert (
        ground_truth_file(dataset) != ann_file
        and ground_truth_file(dataset).parent == tmp_path / "cache" / "gt"
    )
    gt = json.loads(ground_truth_file(dataset).read_text())
    assert [img["id"] for img in gt["images"]] == [3] and gt["annotations"] == []
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


def _doc(images: list[dict], anns: list[dict], cats: list[dict] | None = None) -> dict:
    return {"images": images, "annotations": anns, "categories": cats or [{"id": 1, "name": "a"}]}


def _open(tmp_path: Path, doc: dict | str, **kwargs: Any) -> CocoDataset:
    path = tmp_path / "ann.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return CocoDataset(path, tmp_path / "images", cache_dir=tmp_path / "cache", **kwargs)


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    text = '{\n  "images": [\n    {"id": 1, "file_name": "a.png",}\n  ]\n}\n'
    with pytest.raises(DataError, match=r"ann\.json line 3 column \d+: malformed JSON"):
        _open(tmp_path, text)
    with pytest.raises(DataError, match="JSON object"):
        _open(tmp_path, "[1, 2]")
    with pytest.raises(DataError, match="'images' must be a list"):
        _open(tmp_path, '{"annotations": []}')


def test_duplicate_image_id_is_an_error_or_skipped(tmp_path: Path) -> None:
    _write_png(tmp_path / "images" / "a.png", 20, 20, (9, 9, 9))
    _write_png(tmp_path / "images" / "b.png", 20, 20, (9, 9, 9))
    images = [
        {"id": 4, "file_name": "a.png", "height": 20, "width": 20},
        {"id": 4, "file_name": "b.png", "height": 20, "width": 20},
    ]
    with pytest.raises(DataError, match=r"(?s)duplicate image id.*image id 4: also 'b\.png'"):
        _open(tmp_path, _doc(images, []))
    dataset = _open(tmp_path, _doc(images, []), skip_invalid=True)
    assert len(dataset) == 1 and dataset.load(0).path.endswith("a.png")
    assert dataset.report.count("image_id_duplicate") == 1


def test_duplicate_and_zero_annotation_ids_are_renumbered_for_evaluation(tmp_path: Path) -> None:
    _write_png(tmp_path / "images" / "a.png", 20, 20, (9, 9, 9))
    images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}]
    anns = [
        {"id": 0, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [8, 8, 5, 5]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [2, 9, 4, 4]},
    ]
    dataset = _open(tmp_path, _doc(images, anns))
    assert len(dataset.load(0).boxes) == 3  # all boxes train
    assert dataset.report.count("ann_id_duplicate") == 2
    from detkit.data import format_report

    text = format_report([dataset.report])  # the ids are reported, not only renumbered
    assert "renumbered" in text and text.rstrip().endswith("annotation id 0")  # the first
    examples = dataset.report.to_dict()["issues"]["ann_id_duplicate"]["examples"]
    assert [e.rpartition(" ")[2] for e in examples] == ["0", "3"]  # data_report.json: each id
    gt = json.loads(ground_truth_file(dataset).read_text())
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3]


def test_files_from_other_tools_are_read(tmp_path: Path) -> None:
    """Keypoints, RLE and polygon segmentation, absolute paths inside the root, licences and a
    "background" category (written by some exporters) are accepted or dropped, never fatal."""
    _write_png(tmp_path / "images" / "a.png", 20, 30, (9, 9, 9))
    absolute = str((tmp_path / "images" / "a.png").resolve())
    doc = {
        "info": {"year": 2024},
        "licenses": [{"id": 1, "name": "cc"}],
        "images": [{"id": 7, "file_name": absolute, "height": 20, "width": 30, "license": 1}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 2, "bbox": [1, 1, 5, 5],
             "segmentation": {"counts": "abc", "size": [20, 30]}, "area": 17.5,
             "keypoints": [1, 1, 2], "num_keypoints": 1},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [9, 9, 5, 5],
             "segmentation": [[9, 9, 14, 9, 14, 14]], "attributes": {"occluded": False}},
        ],
        "categories": [
            {"id": 0, "name": "background", "supercategory": "none"},
            {"id": 2, "name": "cat", "keypoints": ["nose"], "skeleton": []},
        ],
    }  # fmt: skip
    dataset = _open(tmp_path, doc)
    assert dataset.class_names == ["cat"] and dataset.cat_ids == [2]
    np.testing.assert_allclose(dataset.load(0).boxes, [[1, 1, 6, 6], [9, 9, 14, 14]])
    assert dataset.report.count("category_background") == 1
    assert ground_truth_file(dataset) == tmp_path / "ann.json"  # nothing evaluation sees changed
    doc["categories"][0]["name"] = "background"
    doc["annotations"][0]["category_id"] = 0  # a used "background" class is a class
    assert _open(tmp_path, doc).class_names == ["background", "cat"]


def test_unknown_image_and_malformed_bbox_are_errors_or_skipped(tmp_path: Path) -> None:
    _write_png(tmp_path / "images" / "a.png", 20, 20, (9, 9, 9))
    images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}]
    anns = [
        {"id": 11, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5]},
        {"id": 13, "image_id": 1, "category_id": 1, "bbox": ["1", 1, 5, 5]},
        {"id": 14, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]},
        {"id": 15, "image_id": 1, "category_id": 1, "bbox": [2, 2, 5, 5]},
    ]
    with pytest.raises(DataError) as err:
        _open(tmp_path, _doc(images, anns))
    for where in ("annotation id 11: image_id 99", "annotation id 12", "annotation id 13",
                  "annotation id 14: category_id 5"):  # fmt: skip
        assert where in str(err.value)
    dataset = _open(tmp_path, _doc(images, anns), skip_invalid=True)
    np.testing.assert_allclose(dataset.load(0).boxes, [[2, 2, 7, 7]])
    counts = {k: v.count for k, v in dataset.report.issues.items()}
    assert counts == {"ann_unknown_image": 1, "ann_malformed": 2, "ann_unknown_class": 1}


def test_escaping_file_name_is_skipped_with_the_flag(tmp_path: Path) -> None:
    _write_png(tmp_path / "images" / "a.png", 20, 20, (9, 9, 9))
    _write_png(tmp_path / "secret.png", 20, 20, (9, 9, 9))
    images = [
        {"id": 1, "file_name": "a.png", "height": 20, "width": 20},
        {"id": 2, "file_name": "../secret.png", "height": 20, "width": 20},
    ]
    anns = [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]}]
    dataset = _open(tmp_path, _doc(images, anns), skip_invalid=True)
    assert dataset.image_ids == [1]
    assert dataset.report.count("image_escapes_root") == 1
    assert dataset.report.count("ann_unknown_image") == 0  # its annotations go with it


def test_crowd_and_cleaned_boxes_reach_evaluation(
    tiny_coco: tuple[Path, Path], tmp_path: Path
) -> None:
    dataset = CocoDataset(*tiny_coco, cache_dir=tmp_path)
    gt = json.loads(
        ground_truth_file(dataset).read_text()
    )  # the degenerate box changed the ground truth
    assert ground_truth_file(dataset).parent == tmp_path / "gt"
    anns = {(a["image_id"], a["iscrowd"]): a for a in gt["annotations"]}
    assert len(gt["annotations"]) == 4 and [a["id"] for a in gt["annotations"]] == [1, 2, 3, 4]
    assert anns[(5, 1)]["bbox"] == [0, 0, 60, 40] and anns[(5, 1)]["ignore"] == 1
    clipped = next(a for a in gt["annotations"] if a["bbox"][0] == 50)
    assert clipped["bbox"] == [50, 30, 10, 5]
    assert {c["id"] for c in gt["categories"]} == {1, 7, 42}
    assert dataset.report.ignored == 1 and dataset.report.negatives == 2
    again = CocoDataset(*tiny_coco, cache_dir=tmp_path)
    assert ground_truth_file(again) == ground_truth_file(
        dataset
    )  # content-addressed: same data, same file


def test_base_name_fallback_tiny_images_and_pixel_limit(tmp_path: Path) -> None:
    _write_png(tmp_path / "images" / "a.png", 20, 20, (9, 9, 9))
    _write_png(tmp_path / "images" / "tiny.png", 6, 40, (9, 9, 9))
    _write_png(tmp_path / "images" / "big.png", 200, 300, (9, 9, 9))
    images = [
        {"id": 1, "file_name": "export/job7/a.png", "height": 20, "width": 20},
        {"id": 2, "file_name": "tiny.png", "height": 6, "width": 40},
        {"id": 3, "file_name": "big.png", "height": 200, "width": 300},
    ]
    dataset = _open(tmp_path, _doc(images, []), max_pixels=50_000)
    assert dataset.image_ids == [1]
    report = dataset.report
    assert report.count("image_basename") == 1
    assert report.count("image_too_small") == 1 and report.count("image_too_large") == 1
    assert "300x200 > max_pixels=50000" in report.issues["image_too_large"].examples[0]
    assert len(_open(tmp_path, _doc(images, []), max_pixels=10**6, min_image_side=5)) == 3


def test_declared_size_differs_from_the_file(tmp_path: Path) -> None:
    _write_png(tmp_path / "images" / "resized.png", 40, 60, (9, 9, 9))  # labelled at 20 x 30
    _write_png(tmp_path / "images" / "other.png", 40, 60, (9, 9, 9))  # json has another aspect
    images = [
        {"id": 1, "file_name": "resized.png", "height": 20, "width": 30},
        {"id": 2, "file_name": "other.png", "height": 50, "width": 50},
        {"id": 3, "file_name": "other.png"},  # no size recorded
    ]
    anns = [{"id": k, "image_id": k, "category_id": 1, "bbox": [2, 2, 10, 6]} for k in (1, 2, 3)]
    dataset = _open(tmp_path, _doc(images, anns))
    np.testing.assert_allclose(dataset.load(0).boxes, [[4, 4, 24, 16]])  # scaled by 2
    np.testing.assert_allclose(dataset.load(1).boxes, [[2, 2, 12, 8]])  # kept in px
    np.testing.assert_allclose(dataset.load(2).boxes, [[2, 2, 12, 8]])
    counts = {k: v.count for k, v in dataset.report.issues.items()}
    assert counts == {"image_size_scaled": 1, "image_size_mismatch": 1, "image_size_missing": 1}


def test_ground_truth_is_built_in_memory_and_matches_the_cached_file(
    tiny_coco: tuple[Path, Path], tmp_path: Path
) -> None:
    from detkit.data import ground_truth, ground_truth_file
    from detkit.eval import coco_evaluate

    dataset = CocoDataset(*tiny_coco, cache_dir=tmp_path / "cache")
    gt = ground_truth(dataset)  # the degenerate box changed the ground truth: not the user's file
    assert isinstance(gt, dict) and not (tmp_path / "cache" / "gt").exists()  # nothing written
    on_disk = json.loads(ground_truth_file(dataset).read_text())
    assert json.loads(json.dumps(gt)) == on_disk
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1}
        for a in on_disk["annotations"]
        if not a["iscrowd"]
    ]
    before = json.dumps(gt)
    assert (
        coco_evaluate(gt, results).stats == coco_evaluate(ground_truth_file(dataset), results).stats
    )
    assert coco_evaluate(gt, results).stats["mAP50"] == pytest.approx(1.0)
    assert json.dumps(gt) == before  # evaluation repairs a copy, never the caller's dict


def test_clean_coco_ground_truth_is_the_users_file(tiny_shapes: Path, tmp_path: Path) -> None:
    from detkit.data import ground_truth, shapes_split

    ann_file, images = shapes_split(tiny_shapes, "val")
    dataset = CocoDataset(ann_file, images, cache_dir=tmp_path)
    assert ground_truth(dataset) == ann_file == ground_truth_file(dataset)
    assert not (tmp_path / "gt").exists()

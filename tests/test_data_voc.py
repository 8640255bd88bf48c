"""Pascal VOC reader and writer: 1-based coordinates, difficult, years combined, bad XML."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detkit.data.check import DataError
from detkit.data.groundtruth import ground_truth_file
from detkit.data.voc import VOC_CLASSES, VocDataset, parse_xml, voc_xml

CLASSES = ["cat", "dog"]


def _object(name: str, box: tuple, difficult: int | None = 0) -> str:
    flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><pose>Left</pose><truncated>1</truncated>{flag}\n"
        f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
        "</bndbox></object>\n"
    )


def _add(year: Path, vid: str, objects: str, write_image, size=(30, 40), xml: str | None = None):
    """One image (``size`` = (h, w)) and its annotation in a VOC year folder."""
    write_image(year / "JPEGImages" / f"{vid}.jpg", size)
    h, w = size
    text = xml or (
        f"<annotation>\n<folder>VOC</folder>\n<filename>{vid}.jpg</filename>\n"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n"
        f"{objects}</annotation>\n"
    )
    (year / "Annotations").mkdir(parents=True, exist_ok=True)
    (year / "Annotations" / f"{vid}.xml").write_text(text)


def _listing(year: Path, split: str, ids: list[str]) -> None:
    folder = year / "ImageSets" / "Main"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def test_one_based_inclusive_coordinates_become_pixel_edges(tmp_path: Path, write_image) -> None:
    year = tmp_path / "VOC2007"
    objects = _object("dog", (1, 1, 40, 30)) + _object("cat", (5, 7, 14, 9))
    objects += _object("cat", (2.5, 3.25, 10.75, 20))  # float coordinates are accepted
    _add(year, "000001", objects, write_image)
    _listing(year, "train", ["000001"])
    sample = VocDataset(tmp_path, ["VOC2007/train"], CLASSES).load(0)
    # Pixel 1 covers [0, 1]: the whole-image box (1, 1, 40, 30) is [0, 0, 40, 30] exactly.
    np.testing.assert_array_equal(
        sample.boxes, [[0, 0, 40, 30], [4, 6, 14, 9], [1.5, 2.25, 10.75, 20]]
    )
    assert sample.labels.tolist() == [1, 0, 0]


def test_difficult_kept_out_of_training_and_ignored_by_evaluation(
    tmp_path: Path, write_image
) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    objects = _object("cat", (3, 3, 12, 12)) + _object("dog", (20, 5, 35, 25), difficult=1)
    objects += _object("dog", (16, 16, 28, 28), difficult=None)  # no tag: not difficult
    _add(tmp_path, "a", objects, write_image)
    _listing(tmp_path, "val", ["a"])
    dataset = VocDataset(tmp_path, ["val"], CLASSES, cache_dir=tmp_path / "cache")
    sample = dataset.load(0)
    assert sample.labels.tolist() == [0, 1] and len(sample.boxes) == 2
    assert dataset.report.ignored == 1 and dataset.cat_ids == [1, 2]
    gt = json.loads(ground_truth_file(dataset).read_text())
    crowd = [a for a in gt["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["bbox"] == [19, 4, 16, 21] and crowd[0]["ignore"] == 1
    assert ground_truth_file(dataset).parent == tmp_path / "cache" / "gt"
    # Perfect detections of the two training boxes score 1.0; the difficult one is not missed,
    # and a detection on it is not a false positive.
    coco = COCO(str(ground_truth_file(dataset)))
    dets = [
        {"image_id": 1, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)


def test_years_combined_in_order_with_ids_and_default_classes(tmp_path: Path, write_image) -> None:
    for year, ids in (("VOC2007", ["000005", "000007"]), ("VOC2012", ["2008_000002"])):
        for vid in ids:
            _add(tmp_path / year, vid, _object("person", (2, 2, 9, 9)), write_image)
        _listing(tmp_path / year, "trainval", ids)
    dataset = VocDataset(tmp_path, ["VOC2007/trainval", "VOC2012/trainval"])
    assert dataset.class_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert dataset.image_ids == [1, 2, 3]
    assert [Path(dataset.load(i).path).stem for i in range(3)] == [
        "000005",
        "000007",
        "2008_000002",
    ]
    assert dataset.load(2).labels.tolist() == [VOC_CLASSES.index("person")]


def test_unknown_class_names_file_and_line_or_is_skipped(tmp_path: Path, write_image) -> None:
    objects = _object("cat", (3, 3, 12, 12)) + _object("zebra", (2, 2, 8, 8))
    _add(tmp_path, "a", objects, write_image)
    _listing(tmp_path, "train", ["a"])
    with pytest.raises(DataError, match=r"a\.xml line 7: class 'zebra' not in class_names"):
        VocDataset(tmp_path, ["train"], CLASSES)
    dataset = VocDataset(tmp_path, ["train"], CLASSES, skip_invalid=True)
    assert dataset.load(0).labels.tolist() == [0]
    assert dataset.report.count("ann_unknown_class") == 1


def test_malformed_missing_and_bad_entries(tmp_path: Path, write_image) -> None:
    _add(tmp_path, "good", _object("cat", (3, 3, 12, 12)), write_image)
    _add(tmp_path, "broken", "", write_image, xml="<annotation>\n<size>\n</annotation>\n")
    _add(tmp_path, "nobox", "<object><name>cat</name><bndbox><xmin>x</xmin></bndbox></object>\n",
         write_image)  # fmt: skip
    _add(tmp_path, "other", "", write_image, xml="<html>\n</html>\n")
    write_image(tmp_path / "JPEGImages" / "noxml.jpg")
    _listing(tmp_path, "train", ["good", "broken", "nobox", "other", "noxml", "good"])
    with pytest.raises(DataError) as err:
        VocDataset(tmp_path, ["train"], CLASSES)
    text = str(err.value)
    assert "broken.xml line 3: malformed XML: mismatched tag" in text
    assert "nobox.xml line" in text and "numeric xmin" in text
    assert "other.xml line 1: root is <html>" in text
    assert "noxml.xml: annotation file missing" in text
    dataset = VocDataset(tmp_path, ["train"], CLASSES, skip_invalid=True)
    assert [Path(dataset.load(i).path).stem for i in range(len(dataset))] == ["good", "nobox"]
    assert dataset.load(1).boxes.shape == (0, 4)  # its malformed object was skipped
    assert dataset.report.count("image_duplicate") == 1  # "good" listed twice
    assert dataset.report.count("file_malformed") == 3
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/test\.txt"):
        VocDataset(tmp_path, ["test"], CLASSES)
    with pytest.raises(FileNotFoundError, match="VOC root"):
        VocDataset(tmp_path / "nope", ["train"], CLASSES)


def test_image_found_by_filename_tag_and_escape_refused(tmp_path: Path, write_image) -> None:
    _add(tmp_path, "a", _object("cat", (3, 3, 12, 12)), write_image)
    (tmp_path / "JPEGImages" / "a.jpg").rename(tmp_path / "JPEGImages" / "a_photo.png")
    xml = (tmp_path / "Annotations" / "a.xml").read_text()
    (tmp_path / "Annotations" / "a.xml").write_text(xml.replace("a.jpg", "a_photo.png"))
    _add(tmp_path, "b", "", write_image)
    (tmp_path / "JPEGImages" / "b.jpg").unlink()
    xml = (tmp_path / "Annotations" / "b.xml").read_text()
    (tmp_path / "Annotations" / "b.xml").write_text(xml.replace("b.jpg", "../../etc/b.jpg"))
    _listing(tmp_path, "train", ["a", "b"])
    with pytest.raises(DataError, match="escapes"):
        VocDataset(tmp_path, ["train"], CLASSES)
    dataset = VocDataset(tmp_path, ["train"], CLASSES, skip_invalid=True)
    assert len(dataset) == 1 and dataset.load(0).path.endswith("a_photo.png")


def test_writer_round_trip_within_half_a_pixel(tmp_path: Path, write_image) -> None:
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 35, (30, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 20, (30, 2))], axis=1)
    boxes = np.minimum(boxes, [40, 30, 40, 30])
    boxes[:, 1::2] = np.minimum(boxes[:, 1::2], 30)
    boxes[:, :2] = np.minimum(boxes[:, :2], boxes[:, 2:] - 1)
    labels = rng.integers(0, 2, 30)
    hard = rng.random(30) < 0.3
    text = voc_xml("a.jpg", 30, 40, boxes, labels, hard, CLASSES)
    assert parse_xml(text.encode()).tag == "annotation"
    write_image(tmp_path / "JPEGImages" / "a.jpg", (30, 40))
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(text)
    _listing(tmp_path, "train", ["a"])
    dataset = VocDataset(tmp_path, ["train"], CLASSES)
    back, back_labels = dataset.targets(0)
    hard_back, hard_labels = dataset.ignored(0)
    np.testing.assert_allclose(back, boxes[~hard], atol=0.5)
    np.testing.assert_allclose(hard_back, boxes[hard], atol=0.5)
    assert back_labels.tolist() == labels[~hard].tolist()
    assert hard_labels.tolist() == labels[hard].tolist()


def test_imagesets_id_escaping_the_root_is_invalid(tmp_path: Path, write_image) -> None:
    root = tmp_path / "VOCdevkit"
    year = root / "VOC2007"
    _add(year, "000001", _object("dog", (1, 1, 20, 20)), write_image)
    _add(tmp_path / "outside" / "x", "secret", _object("dog", (1, 1, 20, 20)), write_image)
    (tmp_path / "outside" / "x.xml").write_text(
        (tmp_path / "outside/x/Annotations/secret.xml").read_text()
    )
    write_image(tmp_path / "outside" / "x.jpg", (30, 40))
    _listing(year, "train", ["000001", "../../../outside/x", "..", "a\\b"])
    with pytest.raises(DataError, match=r"train\.txt line 2: id '\.\./\.\./\.\./outside/x'"):
        VocDataset(root, ["VOC2007/train"], CLASSES)
    dataset = VocDataset(root, ["VOC2007/train"], CLASSES, skip_invalid=True)
    assert [Path(dataset.image_path(i)).name for i in range(len(dataset))] == ["000001.jpg"]
    assert dataset.report.count("image_escapes_root") == 3

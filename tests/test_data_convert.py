"""One scene through COCO, VOC and YOLO: identical reads, round trips, and the converter's rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detkit.data import SHAPES_CLASSES, CocoDataset, VocDataset, YoloDataset, shapes_split
from detkit.data.coco import write_coco
from detkit.data.convert import convert_dataset

CLASSES = list(SHAPES_CLASSES)


def _read(fmt: str, root: Path, split: str, classes: list[str] = CLASSES):
    cache = root.parent / "cache"
    if fmt == "coco":
        return CocoDataset(
            root / "annotations" / f"instances_{split}.json",
            root / "images" / split,
            cache_dir=cache,
        )
    if fmt == "voc":
        return VocDataset(root, [split], classes, cache_dir=cache)
    return YoloDataset(root / "data.yaml", split, cache_dir=cache)


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_same_scene_reads_the_same_in_all_three_formats(
    tiny_formats: dict[str, Path], split: str
) -> None:
    coco = CocoDataset(*shapes_split(tiny_formats["coco"], split))
    voc, yolo = _read("voc", tiny_formats["voc"], split), _read("yolo", tiny_formats["yolo"], split)
    assert len(coco) == len(voc) == len(yolo) > 0
    assert coco.class_names == voc.class_names == yolo.class_names == CLASSES
    for i in range(len(coco)):
        a, b, c = coco.load(i), voc.load(i), yolo.load(i)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.image, c.image)
        np.testing.assert_array_equal(a.boxes, b.boxes)  # integer pixel edges: exact in VOC
        np.testing.assert_allclose(a.boxes, c.boxes, atol=1e-3)  # 6 decimals of the side
        assert a.labels.tolist() == b.labels.tolist() == c.labels.tolist()
        assert len(a.boxes) > 0


@pytest.fixture
def float_scene(tmp_path: Path, write_image) -> Path:
    """A COCO set with sub-pixel boxes, a crowd box, a negative, odd sizes and nested names."""
    rng = np.random.default_rng(11)
    images, anns = [], []
    for k, (h, w, name) in enumerate([(37, 61, "a.png"), (80, 45, "sub/b.jpg"), (50, 50, "c.png")]):
        write_image(tmp_path / "src" / "images" / "train" / name, (h, w))
        images.append({"id": 10 + k, "file_name": name, "height": h, "width": w})
        for _ in range(0 if name == "c.png" else 6):
            x, y = rng.uniform(0, w - 12), rng.uniform(0, h - 12)
            bw, bh = rng.uniform(2, 11, 2)
            cat = int(rng.choice([3, 5, 9]))
            anns.append({"image_id": 10 + k, "category_id": cat, "bbox": [x, y, bw, bh]})
    anns.append({"image_id": 10, "category_id": 5, "bbox": [1.2, 2.7, 20.1, 9.9], "iscrowd": 1})
    cats = [{"id": 3, "name": "circle"}, {"id": 5, "name": "square"}, {"id": 9, "name": "star"}]
    write_coco(tmp_path / "src" / "annotations" / "instances_train.json", images, anns, cats)
    return tmp_path / "src"


def _targets(dataset) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Boxes and labels by image base name (``sub/b.jpg`` is written as ``b.jpg``)."""
    out = {}
    for i in range(len(dataset)):
        boxes, labels = dataset.targets(i)
        out[Path(dataset.file_name(i)).stem] = (boxes, labels.tolist())
    return out


@pytest.mark.parametrize(
    "chain", [("coco", "voc", "yolo", "coco"), ("coco", "yolo", "voc", "coco")]
)
def test_round_trips_keep_labels_and_boxes_within_half_a_pixel(
    float_scene: Path, chain: tuple[str, ...]
) -> None:
    original = _read("coco", float_scene, "train")
    names = original.class_names
    expected = _targets(original)
    source, root = original, float_scene
    for step, fmt in enumerate(chain[1:]):
        root = float_scene.parent / f"{step}-{fmt}"
        convert_dataset({"train": source}, fmt, root)
        source = _read(fmt, root, "train", names)
        assert source.class_names == names
        got = _targets(source)
        assert sorted(got) == sorted(expected) == ["a", "b", "c"]
        for name, (want_boxes, want_labels) in expected.items():
            assert got[name][1] == want_labels
            np.testing.assert_allclose(got[name][0], want_boxes, atol=0.5)
    # Category ids survive COCO -> ... -> COCO only by name: labels are what is kept.
    assert source.class_names == ["circle", "square", "star"]


def test_crowd_becomes_difficult_and_back_yolo_drops_it(float_scene: Path) -> None:
    source = _read("coco", float_scene, "train")
    assert source.report.ignored == 1
    summary = convert_dataset({"train": source}, "voc", float_scene.parent / "voc")
    assert summary["train"] == {"images": 3, "boxes": 12, "ignored": 1, "ignored_dropped": 0}
    voc = _read("voc", float_scene.parent / "voc", "train", source.class_names)
    assert voc.report.ignored == 1
    np.testing.assert_allclose(voc.ignored(0)[0], [[1.2, 2.7, 21.3, 12.6]], atol=0.5)
    back = convert_dataset({"train": voc}, "coco", float_scene.parent / "coco")["train"]
    assert back["ignored"] == 1
    doc = json.loads((float_scene.parent / "coco/annotations/instances_train.json").read_text())
    assert [a["id"] for a in doc["annotations"]] == list(range(1, 14))  # ids start at 1
    assert sum(a["iscrowd"] for a in doc["annotations"]) == 1
    yolo = convert_dataset({"train": voc}, "yolo", float_scene.parent / "yolo")["train"]
    assert yolo["ignored_dropped"] == 1 and yolo["boxes"] == 12


def test_layout_names_and_refusals(tiny_formats: dict[str, Path], tmp_path: Path) -> None:
    sources = {s: CocoDataset(*shapes_split(tiny_formats["coco"], s)) for s in ("train", "val")}
    voc = tiny_formats["voc"]
    train_ids = (voc / "ImageSets/Main/train.txt").read_text().split()
    val_ids = (voc / "ImageSets/Main/val.txt").read_text().split()
    assert not set(train_ids) & set(val_ids)  # shapes reuses file names across splits
    assert len(list((voc / "Annotations").iterdir())) == len(train_ids) + len(val_ids)
    yolo_yaml = (tiny_formats["yolo"] / "data.yaml").read_text()
    assert "path" not in yolo_yaml and "images/val" in yolo_yaml
    with pytest.raises(FileExistsError):
        convert_dataset(sources, "yolo", tiny_formats["yolo"])
    for inside in ("images/train/out", "annotations/out"):
        with pytest.raises(ValueError, match="inside the source"):
            convert_dataset(sources, "yolo", tiny_formats["coco"] / inside)
    with pytest.raises(ValueError, match="unknown format"):
        convert_dataset(sources, "kitti", tmp_path / "k")
    convert_dataset({"train": sources["train"]}, "coco", tmp_path / "linked", images="symlink")
    linked = next((tmp_path / "linked" / "images" / "train").iterdir())
    assert linked.is_symlink() and linked.resolve().is_file()
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_image_whose_exif_tag_was_ignored_is_written_upright(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[2:8, 5:15] = 255
    (tmp_path / "src" / "images").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "src" / "images" / "p.jpg", quality=95, exif=exif)
    images = [{"id": 1, "file_name": "p.jpg", "height": 20, "width": 40}]  # the stored size
    anns = [{"image_id": 1, "category_id": 1, "bbox": [5, 2, 10, 6]}]
    write_coco(tmp_path / "src" / "ann.json", images, anns, [{"id": 1, "name": "x"}])
    source = CocoDataset(tmp_path / "src" / "ann.json", tmp_path / "src" / "images")
    assert source.report.count("image_exif_ignored") == 1
    convert_dataset({"train": source}, "yolo", tmp_path / "yolo")
    back = YoloDataset(tmp_path / "yolo" / "data.yaml", "train")
    assert back.load(0).path.endswith("p.png")  # re-encoded losslessly, without the tag
    np.testing.assert_array_equal(back.load(0).image, source.load(0).image)
    np.testing.assert_allclose(back.load(0).boxes, source.load(0).boxes, atol=1e-3)


def test_voc_ids_with_spaces_are_readable_by_the_voc_reader(tmp_path: Path, write_image) -> None:
    images = tmp_path / "coco" / "images"
    write_image(images / "my photo 1.jpg", (30, 40))
    write_image(images / "other.jpg", (30, 40))
    doc = {
        "images": [
            {"id": 1, "file_name": "my photo 1.jpg", "height": 30, "width": 40},
            {"id": 2, "file_name": "other.jpg", "height": 30, "width": 40},
        ],
        "annotations": [
            {"id": 1, "image_id": k, "category_id": 1, "bbox": [2, 3, 10, 12]} for k in (1, 2)
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    (tmp_path / "coco" / "ann.json").write_text(json.dumps(doc))
    source = CocoDataset(tmp_path / "coco" / "ann.json", images, cache_dir=tmp_path / "c")
    convert_dataset({"train": source}, "voc", tmp_path / "voc")
    listing = (tmp_path / "voc" / "ImageSets" / "Main" / "train.txt").read_text().split()
    assert listing == ["my_photo_1", "other"]
    back = VocDataset(tmp_path / "voc", ["train"], ["a"], cache_dir=tmp_path / "c")
    assert len(back) == 2 and back.report.count("file_malformed") == 0
    np.testing.assert_allclose(back.load(0).boxes, [[2, 3, 12, 15]])


@pytest.mark.parametrize("to", ["voc", "yolo", "coco"])
def test_a_file_name_that_is_not_utf8_converts(tmp_path: Path, write_image, to: str) -> None:
    # VOC's xml and id list are UTF-8 text: an undecodable byte of a name is written as xNN
    images = tmp_path / "coco" / "images"
    name = os.fsdecode(b"caf\xe9 1.jpg")
    write_image(images / name, (30, 40))
    doc = {"images": [{"id": 1, "file_name": name, "height": 30, "width": 40}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12]}],
           "categories": [{"id": 1, "name": "a"}]}  # fmt: skip
    (tmp_path / "coco" / "ann.json").write_text(json.dumps(doc))
    source = CocoDataset(tmp_path / "coco" / "ann.json", images, cache_dir=tmp_path / "c")
    out = tmp_path / f"as_{to}"
    convert_dataset({"train": source, "val": source}, to, out)
    back = {
        "voc": lambda: VocDataset(out, ["train"], ["a"], cache_dir=tmp_path / "c"),
        "yolo": lambda: YoloDataset(out / "data.yaml", "train", cache_dir=tmp_path / "c"),
        "coco": lambda: CocoDataset(out / "annotations/instances_train.json",
                                    out / "images/train", cache_dir=tmp_path / "c"),
    }[to]()  # fmt: skip
    assert len(back) == 1 and Path(back.image_path(0)).name.startswith("cafxe9")
    np.testing.assert_allclose(back.load(0).boxes, [[2, 3, 12, 15]])


def test_coco_output_is_the_evaluation_ground_truth(float_scene: Path, tmp_path: Path) -> None:
    from detkit.data.groundtruth import coco_document

    source = _read("coco", float_scene, "train")
    convert_dataset({"train": source}, "coco", tmp_path / "out")
    written = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())
    truth = json.loads(json.dumps(coco_document(source)))  # one writer: the same document
    assert written["annotations"] == truth["annotations"]
    assert written["categories"] == truth["categories"]
    crowd = [a for a in written["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["ignore"] == 1
    assert crowd[0]["bbox"] == pytest.approx([1.2, 2.7, 20.1, 9.9])
    assert [i["file_name"] for i in written["images"]] == ["a.png", "b.jpg", "c.png"]

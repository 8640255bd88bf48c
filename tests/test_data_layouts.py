"""COCO layouts found, not guessed (issue 22): ``data=<a COCO json>`` finds its images in the
usual places around the json and the val json by name beside it; missing images are one line
naming the folders tried and the key to set; the both-splits warning only when it is true;
``convert`` honours the same keys as ``train``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from detkit.api import build_trainer
from detkit.cli import main
from detkit.config import ConfigError, load_config
from detkit.config.build import build_dataset
from detkit.data.check import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _layout(shapes: Path, root: Path, places: dict[str, tuple[str, str]]) -> dict[str, Path]:
    """Copy the tiny shapes splits into ``root``: ``{split: (json path, images folder)}``
    relative to ``root``; each json's ``file_name`` entries stay the bare file names."""
    out = {}
    for split, (ann, images) in places.items():
        (root / images).mkdir(parents=True, exist_ok=True)
        for f in (shapes / "images" / split).iterdir():
            shutil.copy(f, root / images / f.name)
        (root / ann).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shapes / "annotations" / f"instances_{split}.json", root / ann)
        out[split] = root / ann
    return out


def _open(data: Path, *more: str) -> tuple[int, int, str]:
    cfg = load_config(overrides=[f"data={data}", *more]).data
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    return len(train), len(val), str(val.images_dir)


LAYOUTS = {
    # COCO's own: annotations/instances_<split>.json with images/<split>/ (the shapes layout)
    "coco": {"train": ("annotations/instances_train.json", "images/train"),
             "val": ("annotations/instances_val.json", "images/val")},
    # COCO 2017: annotations/ beside train2017/ and val2017/
    "coco2017": {"train": ("annotations/instances_train2017.json", "train2017"),
                 "val": ("annotations/instances_val2017.json", "val2017")},
    # the images next to each json
    "beside": {"train": ("train/train.json", "train"), "val": ("val/val.json", "val")},
    # an images/ folder beside each json
    "images": {"train": ("train/train.json", "train/images"),
               "val": ("val/val.json", "val/images")},
    # ../images/<split>/ from a labels folder
    "labels": {"train": ("labels/instances_train.json", "images/train"),
               "val": ("labels/instances_val.json", "images/val")},
    # Roboflow's export: train/_annotations.coco.json, valid/_annotations.coco.json
    "roboflow": {"train": ("train/_annotations.coco.json", "train"),
                 "val": ("valid/_annotations.coco.json", "valid")},
}  # fmt: skip


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_data_equals_a_train_json_finds_its_images_and_its_val_json(layout, tiny_shapes, tmp_path):
    jsons = _layout(tiny_shapes, tmp_path, LAYOUTS[layout])
    train, val, val_images = _open(jsons["train"])
    assert (train, val) == (8, 4)  # the val split is the val json's 4 images, not train's 8
    assert Path(val_images) == tmp_path / LAYOUTS[layout]["val"][1]


def test_file_names_that_carry_folders_resolve_from_the_dataset_root(tiny_shapes, tmp_path):
    jsons = _layout(tiny_shapes, tmp_path, LAYOUTS["coco"])
    for split, path in jsons.items():  # "images/train/000000.jpg", relative to the root
        doc = json.loads(path.read_text())
        for image in doc["images"]:
            image["file_name"] = f"images/{split}/{image['file_name']}"
        path.write_text(json.dumps(doc))
    assert _open(jsons["train"])[:2] == (8, 4)


def test_missing_images_are_one_line_naming_the_folders_tried_and_the_key(
    tiny_shapes, tmp_path, monkeypatch, capsys
):
    ann = tmp_path / "annotations" / "instances_train.json"
    ann.parent.mkdir()
    shutil.copy(tiny_shapes / "annotations" / "instances_train.json", ann)
    cfg = load_config(overrides=[f"data={ann}"]).data
    with pytest.raises(DataError) as err:
        build_dataset(cfg, "train")
    message = str(err.value)
    assert "\n" not in message and "none of its images found (e.g. '000000.jpg')" in message
    assert f"looked in {ann.parent}, {ann.parent / 'images'}" in message
    assert str(tmp_path / "images" / "train") in message and str(tmp_path / "train2017") in message
    assert message.endswith("set data.train_images=FOLDER (relative to data.root, or absolute)")
    monkeypatch.chdir(tmp_path)
    assert main(["check-data", str(ann), "--split", "train", "--name", "c"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "runs" / "check_data" / "c").exists()  # no empty folder left

    wrong = load_config(overrides=[f"data={tiny_shapes}/annotations/instances_train.json",
                                   "train_images=annotations"]).data  # fmt: skip
    with pytest.raises(DataError, match=r"is in .*annotations \(data.train_images\); they are in "
                       r".*images/train: set data.train_images="):  # fmt: skip
        build_dataset(wrong, "train")


def test_a_dataset_folder_as_data_names_the_file_to_pass(tiny_shapes, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"data={tiny_shapes}"])
    assert str(err.value) == (
        f"data={tiny_shapes} is a folder: pass a data file inside it, e.g. "
        f"data={tiny_shapes / 'annotations' / 'instances_train.json'}"
    )
    with pytest.raises(ConfigError, match=r"is a folder: pass a COCO json or an Ultralytics"):
        load_config(overrides=[f"data={tmp_path}"])


def test_the_both_splits_warning_only_when_the_splits_are_the_same(tiny_shapes, tmp_path, caplog):
    one = tmp_path / "one" / "all.json"  # no val json beside it: it serves both splits
    _layout(tiny_shapes, tmp_path / "one", {"train": ("all.json", ".")})
    tiny = ["model.widths=[8,16,16,16,16]", "model.neck_width=16", "img_size=64", "batch=4",
            "workers=0",
            "device=cpu", f"project={tmp_path / 'runs'}", "quiet=true"]  # fmt: skip
    standard = tiny_shapes / "annotations" / "instances_train.json"
    cases = [([f"data={one}"], True), ([f"data={one}", f"val_ann={standard.parent}/instances_val.json",
             f"val_images={tiny_shapes}/images/val"], False), ([f"data={standard}"], False)]  # fmt: skip
    for overrides, warned in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="detkit"):
            build_trainer(load_config(overrides=[*overrides, *tiny]))
        assert ("train and val splits are the same 8 images" in caplog.text) == warned, overrides


def test_convert_honours_the_keys_train_honours(tiny_shapes, tmp_path, monkeypatch, capsys):
    ann = tmp_path / "labels" / "train.json"  # the json alone; its images elsewhere
    ann.parent.mkdir()
    shutil.copy(tiny_shapes / "annotations" / "instances_train.json", ann)
    monkeypatch.chdir(tmp_path)
    images = f"train_images={tiny_shapes / 'images' / 'train'}"
    argv = ["convert", str(ann), str(tmp_path / "out"), "--to", "yolo", "--splits", "train"]
    assert main([*argv[:3], images, *argv[3:]]) == 0
    assert "train: 8 images" in capsys.readouterr().out
    assert main([*argv[:2], str(tmp_path / "out2"), *argv[3:]]) == 2  # without the key
    assert "set data.train_images=FOLDER" in capsys.readouterr().err

"""The data verbs end to end (in-process): convert, check-data, their errors; data configs;
and (slow) training on VOC- and YOLO-format copies of the built-in set."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import cv2
import pytest

from detkit.cli import main
from detkit.config import CONFIG_DIR, DataConfig, _field_owner, load_config
from detkit.config.build import build_dataset, dataset_root
from detkit.data import SHAPES_CLASSES
from detkit.data.groundtruth import ground_truth_file

SHAPES = f"[{','.join(SHAPES_CLASSES)}]"


def test_every_data_field_is_a_unique_bare_override() -> None:
    for f in fields(DataConfig):
        assert _field_owner(f.name) == "data", f.name


@pytest.mark.parametrize(
    ("name", "fmt", "key", "value"),
    [
        ("coco", "coco", "train_images", "train2017"),
        ("voc", "voc", "voc_train", ["VOC2007/trainval", "VOC2012/trainval"]),
        ("yolo", "yolo", "yolo_yaml", "data.yaml"),
        ("shapes", "shapes", "num_train", 2000),
    ],
)
def test_data_configs_need_only_a_root(name: str, fmt: str, key: str, value: object) -> None:
    assert (CONFIG_DIR / "data" / f"{name}.yaml").is_file()
    cfg = load_config(overrides=[f"data={name}", "root=/data/x"]).data
    assert cfg.format == fmt and cfg.root == "/data/x" and getattr(cfg, key) == value


def test_build_dataset_opens_every_format(tiny_formats: dict[str, Path], tmp_path: Path) -> None:
    cache = f"cache_dir={tmp_path}"
    cases = {
        "coco": ["data.format=coco", f"root={tiny_formats['coco']}"],
        "voc": ["data=voc", f"root={tiny_formats['voc']}", "voc_train=[train]",
                "voc_val=[val]", f"class_names={SHAPES}"],
        "yolo": ["data=yolo", f"root={tiny_formats['yolo']}"],
    }  # fmt: skip
    for fmt, overrides in cases.items():
        cfg = load_config(overrides=[*overrides, cache]).data
        train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
        assert (len(train), len(val)) == (8, 4) and train.class_names == list(SHAPES_CLASSES)
        assert val.report.name == f"val ({fmt})"
        assert (
            ground_truth_file(val).is_file()
            and json.loads(ground_truth_file(val).read_text())["images"]
        )
    bad = load_config(overrides=[*cases["coco"], "class_names=[a,b]"]).data
    with pytest.raises(ValueError, match="differ from the categories"):
        build_dataset(bad, "train")
    with pytest.raises(ValueError, match="unknown"):
        dataset_root(DataConfig(format="kitti", root="/x"))
    with pytest.raises(ValueError, match="root is empty"):
        dataset_root(DataConfig(format="voc"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        dataset_root(DataConfig(format="yolo", root=str(tmp_path / "nope")))


def test_convert_then_check_data_writes_report_and_pictures(
    tiny_formats: dict[str, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "voc-copy"
    src = str(tiny_formats["coco"])
    assert main(["convert", src, "--from", "coco", "--to", "voc", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train: 8 images" in printed
    command = f"data=voc root={out} voc_train=[train] voc_val=[val] class_names={SHAPES}"
    assert command in printed
    args = ["check-data", "voc", *command.split()[1:], "mosaic=0.5", "--show-aug", "6"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "train (voc): 8 of 8 images kept" in printed and "no problems found" in printed
    assert "circle" in printed and "aspect ratio (w/h)" in printed
    folder = tmp_path / "runs" / "check_data" / "voc"
    for name in ("train_classes.png", "train_box_sizes.png", "val_classes.png", "augmented.png"):
        image = cv2.imread(str(folder / name))
        assert image is not None and image.std() > 10, name  # a real picture, not a blank
    assert cv2.imread(str(folder / "augmented.png")).shape[:2] == (
        2 * 256,
        3 * 256,
    )  # 6 tiles: 2 rows of 3
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["train"]["images"] == 8 and stats["val"]["images"] == 4
    assert sum(c["boxes"] for c in stats["train"]["per_class"].values()) == stats["train"]["boxes"]
    assert "train (voc)" in (folder / "data_report.txt").read_text()


def test_bad_data_is_one_error_line_naming_file_and_line(
    tiny_formats: dict[str, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "yolo-copy"
    assert main(["convert", str(tiny_formats["voc"]), "--from", "voc", "--to", "yolo", str(out),
                 "voc_train=[train]", "voc_val=[val]", f"class_names={SHAPES}"]) == 0  # fmt: skip
    label = sorted((out / "labels" / "train").iterdir())[2]
    label.write_text(label.read_text() + "7 0.5 0.5 0.1 0.1\n")
    lines = len(label.read_text().splitlines())
    capsys.readouterr()
    assert main(["check-data", "yolo", f"root={out}", "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train (yolo): 1 invalid entry")
    assert f"{label.name} line {lines}: class 7 not in 0..3" in err and "Traceback" not in err
    assert main(["check-data", "yolo", f"root={out}", "skip_invalid=true", "--split", "train"]) == 0
    assert "class id or name not in the class list" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["voc", "yolo"])
def test_training_runs_on_converted_copies(
    tiny_formats: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    from detkit.api import train

    data = {
        "voc": ["data=voc", f"root={tiny_formats['voc']}", "voc_train=[train]",
                "voc_val=[val]", f"class_names={SHAPES}"],
        "yolo": ["data=yolo", f"root={tiny_formats['yolo']}"],
    }[fmt]  # fmt: skip
    cfg = load_config(
        overrides=[*data, f"cache_dir={tmp_path / 'cache'}", "epochs=1", "batch=4", "img_size=64",
                   "workers=0", "quiet=true", f"project={tmp_path / 'runs'}", "amp=false"]
    )  # fmt: skip
    run = train(cfg)
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("epoch")
    assert (run / "last.pt").is_file()
    header, last = rows[0].split(","), rows[1].split(",")
    assert 0.0 <= float(last[header.index("mAP50")]) <= 1.0  # validation scored the split
    assert not (tmp_path / "cache" / "gt").exists()  # in memory: no ground-truth file written


def _foreign_coco(tiny_shapes: Path, folder: Path) -> Path:
    """The tiny train split as another tool exports it (kwcoco's demo): absolute image paths
    under the json's folder, an unused "background" category with id 0, no ``iscrowd``."""
    from detkit.data import shapes_split

    ann, images = shapes_split(tiny_shapes, "train")
    doc = json.loads(ann.read_text())
    (folder / "_assets" / "images").mkdir(parents=True)
    for image in doc["images"]:
        target = folder / "_assets" / "images" / Path(image["file_name"]).name
        target.write_bytes((images / image["file_name"]).read_bytes())
        image["file_name"] = str(target.resolve())
    for a in doc["annotations"]:
        a.pop("iscrowd", None)
        a["category_id"] += 1
    doc["categories"] = [{"id": 0, "name": "background"}] + [
        {**c, "id": c["id"] + 1} for c in doc["categories"]
    ]
    path = folder / "data.kwcoco.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_coco_file_with_absolute_paths_opens_from_data_equals_the_file(
    tiny_shapes: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    path = _foreign_coco(tiny_shapes, tmp_path / "kw")
    for override in (f"data={path}", f"data.root={path}"):
        cfg = load_config(overrides=[override, f"cache_dir={tmp_path / 'cache'}"])
        assert cfg.data.format == "coco"
        train, val = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
        assert len(train) == len(val) == 8 and train.class_names == list(SHAPES_CLASSES)
        assert train.cat_ids == [2, 3, 4, 5] and not train.report.count("image_escapes_root")
    monkeypatch.chdir(tmp_path)
    assert main(["check-data", str(path), "--split", "train"]) == 0
    assert "8 of 8 images kept" in capsys.readouterr().out
    assert main(["convert", str(path), str(tmp_path / "as-yolo"), "--to", "yolo"]) == 0
    assert "train: 8 images" in capsys.readouterr().out
    assert main(["convert", str(path), str(tmp_path / "as-yolo"), "--to", "voc"]) == 2
    assert "exists; convert writes a new folder" in capsys.readouterr().err


def test_an_ultralytics_data_yaml_is_a_data_entry_point(tiny_formats: dict[str, Path]) -> None:
    data_yaml = tiny_formats["yolo"] / "data.yaml"
    cfg = load_config(overrides=[f"data={data_yaml}", "imgsz=64"])
    assert (cfg.data.format, cfg.data.root, cfg.train.img_size) == (
        "yolo",
        str(tiny_formats["yolo"]),
        64,
    )
    assert len(build_dataset(cfg.data, "val")) == 4


def test_a_split_with_no_usable_image_names_the_reason(
    tiny_shapes: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    path = _foreign_coco(tiny_shapes, tmp_path / "kw")
    moved = tmp_path / "elsewhere" / "data.json"
    moved.parent.mkdir()
    moved.write_text(path.read_text().replace(str(tmp_path / "kw"), str(tmp_path / "other")))
    monkeypatch.chdir(tmp_path)
    argv = ["check-data", str(moved), "skip_invalid=true", "--split", "train"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no usable image; most common reason: file name escapes the dataset root (8)" in err
    assert not (tmp_path / "runs" / "check_data").exists()  # no empty run folder left behind

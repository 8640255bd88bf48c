"""YOLO (Ultralytics layout) reader: data.yaml forms, label rows good and bad, negatives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detkit.data.check import DataError
from detkit.data.groundtruth import ground_truth_file
from detkit.data.yolo import YoloDataset, label_path, yolo_rows

H, W = 50, 100


def _dataset(
    tmp_path: Path, write_image, labels: dict[str, str | bytes | None], yaml: str = ""
) -> Path:
    """images/train/<name>.jpg with labels/train/<name>.txt (None: no label file)."""
    for name, rows in labels.items():
        write_image(tmp_path / "images" / "train" / f"{name}.jpg", (H, W))
        if rows is None:
            continue
        target = tmp_path / "labels" / "train" / f"{name}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    data = tmp_path / "data.yaml"
    data.write_text(yaml or "train: images/train\nval: images/train\nnames: [cat, dog, bird]\n")
    return data


def test_rows_become_pixel_boxes(tmp_path: Path, write_image) -> None:
    data = _dataset(tmp_path, write_image, {"a": "0 0.5 0.5 0.2 0.4\n2 0.1 0.2 0.2 0.4\n"})
    sample = YoloDataset(data, "train").load(0)
    np.testing.assert_allclose(sample.boxes, [[40, 15, 60, 35], [0, 0, 20, 20]], atol=1e-4)
    assert sample.labels.tolist() == [0, 2]
    assert yolo_rows(sample.boxes, sample.labels, H, W).splitlines() == [
        "0 0.500000 0.500000 0.200000 0.400000",
        "2 0.100000 0.200000 0.200000 0.400000",
    ]
    scored = yolo_rows(sample.boxes, sample.labels, H, W, scores=np.array([0.9, 0.123456]))
    assert scored.splitlines()[1] == "2 0.100000 0.200000 0.200000 0.400000 0.12346"


def test_detections_write_yolo_rows_through_the_one_writer() -> None:
    from detkit.inference.detections import Detections

    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 200.0, 100.0]])
    d = Detections(boxes, torch.tensor([0.9, 0.5]), torch.tensor([2, 0]), ["a", "b", "c"])
    d.orig_shape = (100, 200)
    assert d.to_yolo() == [
        "2 0.100000 0.400000 0.100000 0.400000",
        "0 0.500000 0.500000 1.000000 1.000000",
    ]
    assert d.to_yolo(with_scores=True)[0] == "2 0.100000 0.400000 0.100000 0.400000 0.90000"


def test_empty_and_missing_label_files_are_counted_negatives(tmp_path: Path, write_image) -> None:
    data = _dataset(
        tmp_path, write_image, {"a": "1 0.5 0.5 0.2 0.2\n", "b": "", "c": None, "d": "\n\n"}
    )
    dataset = YoloDataset(data, "train", cache_dir=tmp_path / "cache")
    assert len(dataset) == 4
    assert [len(dataset.load(i).boxes) for i in range(4)] == [1, 0, 0, 0]
    report = dataset.report
    assert (report.negatives, report.no_label_file, report.boxes) == (3, 1, 1)
    assert "3 negatives (1 without a label file)" in report.table()
    gt = json.loads(ground_truth_file(dataset).read_text())
    assert len(gt["images"]) == 4 and len(gt["annotations"]) == 1


def test_crlf_and_bom_are_read(tmp_path: Path, write_image) -> None:
    rows = b"\xef\xbb\xbf0 0.5 0.5 0.2 0.2\r\n1 0.25 0.5 0.1 0.2\r\n"
    data = _dataset(tmp_path, write_image, {"a": rows, "b": "0 0.5 0.5 0.2 0.2\n"})
    dataset = YoloDataset(data, "train")
    assert dataset.load(0).labels.tolist() == [0, 1]
    assert dataset.report.count("label_bom_crlf") == 1


@pytest.mark.parametrize(
    ("row", "kind", "message"),
    [
        ("0 0.5 0.5 0.2", "ann_malformed", "4 columns, expected 5"),
        ("0 0.5 0.5 0.2 0.2 0.9", "ann_malformed", "6 columns"),
        ("0 0.5 abc 0.2 0.2", "ann_malformed", "non-numeric token"),
        ("1.5 0.5 0.5 0.2 0.2", "ann_malformed", "not an integer"),
        ("3 0.5 0.5 0.2 0.2", "ann_unknown_class", "class 3 not in 0..2"),
        ("-1 0.5 0.5 0.2 0.2", "ann_unknown_class", "class -1 not in 0..2"),
        ("0 50 25 20 10", "ann_malformed", "outside [0, 1]"),  # pixels, not fractions
        ("0 0.5 1.2 0.2 0.2", "ann_malformed", "outside [0, 1]"),
    ],
)
def test_bad_rows_name_file_and_line_or_are_skipped(
    tmp_path: Path, write_image, row: str, kind: str, message: str
) -> None:
    data = _dataset(tmp_path, write_image, {"a": f"1 0.5 0.5 0.2 0.2\n\n{row}\n"})
    with pytest.raises(DataError) as err:
        YoloDataset(data, "train")
    place = next(line for line in str(err.value).splitlines() if "a.txt line 3:" in line)
    assert message in place
    dataset = YoloDataset(data, "train", skip_invalid=True)
    assert dataset.load(0).labels.tolist() == [1]
    assert dataset.report.count(kind) == 1


def test_small_overshoot_is_clipped_and_bad_boxes_dropped(tmp_path: Path, write_image) -> None:
    rows = (
        "0 0.95 0.5 0.109 0.2\n"  # right edge at 1.0045: within tolerance, clipped
        "0 0.5 0.5 0 0.2\n"  # zero width
        "0 nan 0.5 0.2 0.2\n"
        "1 0.2 0.2 0.1 0.1\n"
        "1 0.2 0.2 0.1 0.1\n"  # exact duplicate
    )
    dataset = YoloDataset(_dataset(tmp_path, write_image, {"a": rows}), "train")
    np.testing.assert_allclose(
        dataset.load(0).boxes, [[89.55, 20, 100, 30], [15, 7.5, 25, 12.5]], atol=1e-3
    )
    counts = {k: v.count for k, v in dataset.report.issues.items()}
    assert counts == {"box_clipped": 1, "box_empty": 1, "box_nan": 1, "box_duplicate": 1}


@pytest.mark.parametrize(
    "names",
    [
        "names: [cat, dog, bird]",
        "names: {0: cat, 1: dog, 2: bird}",
        "nc: 3\nnames:\n  0: cat\n  1: dog\n  2: bird",
    ],
)
def test_names_as_list_or_dict(tmp_path: Path, write_image, names: str) -> None:
    data = _dataset(tmp_path, write_image, {"a": ""}, yaml=f"train: images/train\n{names}\n")
    assert YoloDataset(data, "train").class_names == ["cat", "dog", "bird"]


@pytest.mark.parametrize(
    ("yaml", "error"),
    [
        ("train: images/train\nnames: {0: a, 2: b}\n", "not 0..1"),
        ("train: images/train\nnc: 5\nnames: [a, b]\n", "nc=5 but 2 names"),
        ("train: images/train\n", "no 'names'"),
        ("names: [a]\n", "no 'train' entry"),
        ("train: images/train\nnames: [a, b\n", "line 3: malformed YAML"),
    ],
)
def test_bad_data_yaml(tmp_path: Path, write_image, yaml: str, error: str) -> None:
    data = _dataset(tmp_path, write_image, {"a": ""}, yaml=yaml)
    with pytest.raises(DataError, match=error):
        YoloDataset(data, "train")


def test_path_key_txt_lists_and_duplicates(tmp_path: Path, write_image) -> None:
    root = tmp_path / "set"
    _dataset(root, write_image, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    (root / "train.txt").write_text(
        "./images/train/b.jpg\nimages/train/a.jpg\n./images/train/b.jpg\n"
    )
    elsewhere = tmp_path / "configs" / "data.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("path: ../set\ntrain: train.txt\nval: [images/train]\nnames: [x, y]\n")
    listed = YoloDataset(elsewhere, "train")
    assert [Path(listed.load(i).path).name for i in range(len(listed))] == ["b.jpg", "a.jpg"]
    assert listed.report.count("image_duplicate") == 1
    assert len(YoloDataset(elsewhere, "val")) == 2
    assert label_path(root / "images" / "train" / "a.jpg") == root / "labels" / "train" / "a.txt"
    with pytest.raises(DataError, match="differ from class_names"):
        YoloDataset(elsewhere, "train", class_names=["x", "z"])
    (tmp_path / "bad.yaml").write_text("train: nowhere\nnames: [x]\n")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        YoloDataset(tmp_path / "bad.yaml", "train")

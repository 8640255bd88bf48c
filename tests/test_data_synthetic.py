from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from detkit.data import synthetic
from detkit.data.coco import CocoDataset
from detkit.data.synthetic import (
    SHAPES_CLASSES,
    ensure_shapes,
    generate_shapes,
    render_scene,
    shapes_split,
)


def _iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Brute-force pairwise IoU of xyxy boxes, diagonal zeroed."""
    n = len(boxes)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            a, b = boxes[i], boxes[j]
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
            out[i, j] = iw * ih / union
    return out


class _NoNoise:
    """A Generator stand-in whose Gaussian noise is zero (everything else is delegated)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rng, name)

    def standard_normal(self, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)


def test_render_scene_deterministic() -> None:
    a = render_scene(np.random.default_rng(123), 250, 300)
    b = render_scene(np.random.default_rng(123), 250, 300)
    c = render_scene(np.random.default_rng(124), 250, 300)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("seed", range(12))
def test_render_scene_contract(seed: int) -> None:
    height, width = 240 + 7 * seed, 320 - 5 * seed
    image, boxes, labels = render_scene(np.random.default_rng(seed), height, width)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert boxes.dtype == np.float32 and labels.dtype == np.int64
    assert 1 <= len(boxes) <= synthetic.MAX_OBJECTS and boxes.shape == (len(labels), 4)
    assert ((labels >= 0) & (labels < len(SHAPES_CLASSES))).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 3] <= height).all()
    sizes = boxes[:, 2:] - boxes[:, :2]
    assert (sizes.min(axis=1) >= 8).all()
    assert (sizes.max(axis=1) <= 0.5 * min(height, width)).all()
    assert (_iou_matrix(boxes) < synthetic.MAX_IOU).all()


@pytest.mark.parametrize("seed", range(8))
def test_render_scene_boxes_are_tight(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a black background with no clutter and no noise, each object is a separate
    # connected component; its pixels of coverage >= 1/2 must span its box exactly.
    monkeypatch.setattr(synthetic, "_background", lambda rng, h, w: np.zeros((h, w, 3), np.float32))
    monkeypatch.setattr(synthetic, "_draw_distractors", lambda rng, image: None)
    image, boxes, _ = render_scene(_NoNoise(np.random.default_rng(seed)), 260, 300)
    peak = image.max(axis=2).astype(np.float32)
    count, components = cv2.connectedComponents((peak > 0).astype(np.uint8), connectivity=8)
    assert count - 1 == len(boxes)
    for k in range(1, count):
        inside = components == k
        solid = inside & (peak >= 0.5 * peak[inside].max())
        ys, xs = np.nonzero(solid)
        measured = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
        distance = np.abs(boxes - measured).max(axis=1)
        assert distance.min() <= 1.0, (measured, boxes)


def test_render_scene_covers_all_classes_and_sizes() -> None:
    labels, sizes = [], []
    for seed in range(40):
        _, boxes, lab = render_scene(np.random.default_rng(seed), 300, 300)
        labels.extend(lab.tolist())
        sizes.extend((boxes[:, 2:] - boxes[:, :2]).max(axis=1).tolist())
    counts = np.bincount(labels, minlength=len(SHAPES_CLASSES))
    assert (counts >= 0.1 * len(labels)).all(), counts
    assert min(sizes) < 20 and max(sizes) > 90


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_generate_shapes_is_byte_identical_for_a_seed(tmp_path: Path, tiny_shapes: Path) -> None:
    again = generate_shapes(tmp_path / "again", num_train=8, num_val=4)
    assert _tree(again) == _tree(tiny_shapes)
    other = generate_shapes(tmp_path / "other", num_train=8, num_val=4, seed=1)
    assert _tree(other) != _tree(tiny_shapes)


def test_generate_shapes_layout_and_classes(tiny_shapes: Path) -> None:
    assert (tiny_shapes / "done").is_file()
    for split, n in (("train", 8), ("val", 4)):
        ann_file, images_dir = shapes_split(tiny_shapes, split)
        doc = json.loads(ann_file.read_text())
        assert [c["name"] for c in doc["categories"]] == list(SHAPES_CLASSES)
        assert len(doc["images"]) == n == len(list(images_dir.glob("*.jpg")))
        assert min(a["id"] for a in doc["annotations"]) == 1
    doc = json.loads(shapes_split(tiny_shapes, "train")[0].read_text())
    assert {a["category_id"] for a in doc["annotations"]} == {1, 2, 3, 4}


def test_generated_dataset_reads_back_identically(tiny_shapes: Path) -> None:
    dataset = CocoDataset(*shapes_split(tiny_shapes, "val"))
    assert dataset.class_names == list(SHAPES_CLASSES)
    assert len(dataset) == 4
    for i in range(len(dataset)):
        sample = dataset.load(i)
        rng = np.random.default_rng([0, 1, i])
        height, width = (int(v) for v in rng.integers(240, 321, 2))
        image, boxes, labels = render_scene(rng, height, width)
        np.testing.assert_array_equal(sample.boxes, boxes)
        np.testing.assert_array_equal(sample.labels, labels)
        assert sample.image.shape == image.shape
        # JPEG (4:2:0 chroma, noisy scenes) costs a few levels; a BGR/RGB swap costs far more.
        error = np.abs(sample.image.astype(int) - image).mean()
        swapped = np.abs(sample.image[..., ::-1].astype(int) - image).mean()
        assert error < 10 and error < swapped / 2


def test_shapes_split_rejects_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test"):
        shapes_split(tmp_path, "test")


def test_ensure_shapes_uses_detkit_home_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DETKIT_HOME", str(tmp_path))
    root = ensure_shapes(num_train=3, num_val=2, seed=5)
    assert root == tmp_path / "datasets" / "shapes-3-2-s5-v1"
    assert (root / "done").is_file()
    stamp = (root / "done").stat().st_mtime_ns

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("regenerated a finished dataset")

    monkeypatch.setattr(synthetic, "generate_shapes", fail)
    assert ensure_shapes(num_train=3, num_val=2, seed=5) == root
    assert (root / "done").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]


def test_ensure_shapes_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileExistsError, match="done"):
        ensure_shapes(tmp_path / "mine", num_train=2, num_val=1)


def test_interrupted_generation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = synthetic.render_scene

    def flaky(rng: np.random.Generator, height: int, width: int) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(rng, height, width)

    variant = dataclasses.replace(synthetic.EASY, render=flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(tmp_path / "shapes", num_train=4, num_val=1, variant=variant)
    assert list(tmp_path.iterdir()) == []


def test_module_entry_prints_a_val_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "s"
    synthetic.main(["--root", str(root), "--num-train", "2", "--num-val", "2", "--val-image", "1"])
    printed = Path(capsys.readouterr().out.strip())
    assert printed == root / "images" / "val" / "000001.jpg" and printed.is_file()
    synthetic.main(["--root", str(root), "--num-train", "2", "--num-val", "2"])
    assert capsys.readouterr().out.strip() == str(root)


def test_hard_variant_is_cluttered_small_and_deterministic(tmp_path: Path) -> None:
    from detkit.data.shapes_hard import HARD, HARD_CLASSES, MIN_VISIBLE, render_hard_scene

    small = n = 0
    for i in range(40):
        image, boxes, labels = render_hard_scene(np.random.default_rng([0, 0, i]), 320, 320)
        again = render_hard_scene(np.random.default_rng([0, 0, i]), 320, 320)
        assert np.array_equal(image, again[0]) and np.array_equal(boxes, again[1])
        assert image.shape == (320, 320, 3) and 1 <= len(boxes) <= 8
        assert set(labels.tolist()) <= set(range(len(HARD_CLASSES)))
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 320).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        small, n = small + int((area < 32**2).sum()), n + len(boxes)
    assert 0.4 < small / n < 0.75  # about half the boxes are COCO-small
    assert MIN_VISIBLE == 0.6
    root = generate_shapes(tmp_path / "hard", num_train=3, num_val=2, variant=HARD)
    ann = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert [c["name"] for c in ann["categories"]] == list(HARD_CLASSES)
    assert (root / "done").read_text().startswith("shapes-hard ")


def test_hard_variant_occludes_but_keeps_most_of_each_object() -> None:
    from detkit.data import shapes_hard as H

    overlaps = 0
    for i in range(30):
        rng = np.random.default_rng([1, 0, i])
        owner = np.full((320, 320), -1, dtype=np.int16)
        image = np.zeros((320, 320, 3), np.float32)
        areas: list[int] = []
        for _ in range(8):
            H._place(rng, image, owner, areas)
        visible = np.bincount(owner.ravel() + 1, minlength=len(areas) + 1)[1:]
        assert (visible >= H.MIN_VISIBLE * np.asarray(areas)).all()
        overlaps += int((visible < np.asarray(areas)).sum())
    assert overlaps > 0  # occlusion happens

"""k-means anchors: clusters recovered, fitness, the dataset's letterboxed sizes and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from detkit.cli import main
from detkit.data import CocoDataset
from detkit.models.anchors import (
    anchor_fitness,
    dataset_box_sizes,
    kmeans_anchors,
    shape_iou,
    split_levels,
)


def test_kmeans_recovers_three_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 10.0], [30.0, 60.0], [100.0, 50.0]])
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, size=(200, 2)) for c in centres])
    anchors = kmeans_anchors(wh, 3, seed=1)
    np.testing.assert_allclose(anchors, centres, rtol=0.05)  # sorted by area, as the centres
    fit = anchor_fitness(wh, anchors)
    assert fit["recall"] == 1.0 and fit["mean_iou"] > 0.9


def test_kmeans_is_seeded_and_needs_enough_boxes():
    wh = np.random.default_rng(3).uniform(5, 80, size=(300, 2))
    np.testing.assert_array_equal(kmeans_anchors(wh, 6, seed=2), kmeans_anchors(wh, 6, seed=2))
    with pytest.raises(ValueError, match="at least 9"):
        kmeans_anchors(wh[:5], 9)


def test_more_anchors_fit_better():
    wh = np.random.default_rng(4).lognormal(3, 0.6, size=(500, 2))
    fits = [anchor_fitness(wh, kmeans_anchors(wh, k))["mean_iou"] for k in (1, 3, 9)]
    assert fits[0] < fits[1] < fits[2]


def test_shape_iou_hand_values():
    iou = shape_iou(np.array([[4.0, 2.0]]), np.array([[2.0, 4.0], [4.0, 2.0], [8.0, 4.0]]))
    np.testing.assert_allclose(iou, [[4 / 12, 1.0, 8 / 32]])


def test_fitness_ratio_threshold():
    fit = anchor_fitness(np.array([[10.0, 10.0], [100.0, 10.0]]), np.array([[10.0, 10.0]]))
    assert fit["recall"] == 0.5 and fit["anchors_per_box"] == 0.5


def test_split_levels_rejects_uneven():
    with pytest.raises(ValueError, match="split"):
        split_levels(np.ones((4, 2)), 3)


def test_dataset_sizes_are_letterboxed(tiny_shapes):
    ds = CocoDataset(tiny_shapes / "annotations/instances_train.json", tiny_shapes / "images/train")
    wh = dataset_box_sizes(ds, 128)
    sample = ds.load(0)
    scale = 128 / max(sample.image.shape[:2])
    expected = (sample.boxes[:, 2:] - sample.boxes[:, :2]) * scale
    np.testing.assert_allclose(wh[: len(expected)], expected, rtol=1e-6)
    assert len(wh) == sum(len(ds.load(i).boxes) for i in range(len(ds)))

    class LoadOnly:  # a source with only len() and load(): every image decoded
        def __len__(self):
            return len(ds)

        def load(self, i):
            return ds.load(i)

    np.testing.assert_allclose(dataset_box_sizes(LoadOnly(), 128), wh)


def test_anchors_cli_prints_yaml(tiny_shapes, capsys):
    args = [f"root={tiny_shapes}", "num_train=8", "num_val=4", "img_size=128"]
    assert main(["anchors", "--per-level", "1", *args]) == 0
    out = capsys.readouterr().out
    assert "mean best IoU" in out and out.count("- - [") == 3

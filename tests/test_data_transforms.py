from __future__ import annotations

import numpy as np
import pytest
import torch

from detkit.data.transforms import PAD_VALUE, build_transforms, letterbox_image, letterbox_info
from detkit.data.types import LetterboxInfo

SIZES = [(300, 240), (240, 320), (257, 511), (100, 50), (800, 600), (256, 256), (31, 700)]


def _random_boxes(rng: np.random.Generator, height: int, width: int, n: int) -> np.ndarray:
    xy = rng.uniform(0, 1, (n, 2, 2)) * [width, height]
    lo, hi = xy.min(axis=1), xy.max(axis=1) + 2
    return np.concatenate([lo, np.minimum(hi, [width, height])], axis=1).astype(np.float32)


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_eval_letterbox_round_trips_boxes(height: int, width: int) -> None:
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    boxes = _random_boxes(rng, height, width, 20)
    labels = np.arange(20)
    out, out_boxes, out_labels, info = build_transforms(256, train=False)(image, boxes, labels)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert out_boxes.dtype == np.float32 and out_labels.dtype == np.int64
    np.testing.assert_array_equal(out_labels, labels)
    np.testing.assert_allclose(info.to_input(boxes), out_boxes, atol=1e-3)
    np.testing.assert_allclose(info.to_orig(out_boxes), boxes, atol=0.5)
    # The padding starts exactly where the info says the resized image ends.
    new_w, new_h = round(width * info.scale_x), round(height * info.scale_y)
    assert max(new_w, new_h) == 256 and (info.pad_x, info.pad_y) == (0.0, 0.0)
    assert (out[new_h:] == PAD_VALUE).all() and (out[:, new_w:] == PAD_VALUE).all()


@pytest.mark.parametrize(("height", "width"), [(300, 240), (240, 320), (123, 77)])
def test_eval_letterbox_moves_pixels_and_boxes_together(height: int, width: int) -> None:
    image = np.zeros((height, width, 3), np.uint8)
    box = np.array([[20, 30, 61, 75]], np.float32)
    image[30:75, 20:61] = 255
    out, out_boxes, _, _ = build_transforms(320, train=False)(image, box, np.array([0]))
    ys, xs = np.nonzero(out[..., 0] >= 128)
    measured = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    np.testing.assert_allclose(out_boxes[0], measured, atol=1.0)


def test_letterbox_info_matches_hand_values() -> None:
    info = letterbox_info(300, 240, 256)
    assert (info.orig_h, info.orig_w) == (300, 240)
    assert info.scale_y == 256 / 300 and info.scale_x == 205 / 240


def test_letterbox_image_is_the_eval_transform() -> None:
    image = np.random.default_rng(0).integers(0, 255, (200, 330, 3), dtype=np.uint8)
    before = image.copy()
    out, info = letterbox_image(image, 160)
    expected, _, _, expected_info = build_transforms(160, train=False)(
        image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    )
    np.testing.assert_array_equal(out, expected)
    assert info == expected_info
    np.testing.assert_array_equal(image, before)
    again, _ = letterbox_image(image, 160)
    np.testing.assert_array_equal(again, out)


@pytest.mark.parametrize("train", [False, True])
def test_empty_boxes(train: bool) -> None:
    image = np.full((120, 90, 3), 50, np.uint8)
    transform = build_transforms(64, train=train)
    for _ in range(5):
        out, boxes, labels, info = transform(image, np.zeros((0, 4)), np.zeros(0))
        assert out.shape == (64, 64, 3)
        assert boxes.shape == (0, 4) and boxes.dtype == np.float32
        assert labels.shape == (0,) and labels.dtype == np.int64
        assert isinstance(info, LetterboxInfo)


def test_train_transform_keeps_boxes_inside_and_labels_aligned() -> None:
    # Four non-overlapping rectangles, each filled with its own colour and label: after
    # augmentation, the centre of each surviving box must still show its label's colour.
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
    boxes = np.array(
        [[10, 10, 60, 50], [200, 20, 290, 120], [30, 150, 110, 230], [180, 170, 240, 235]],
        np.float32,
    )
    image = np.zeros((240, 300, 3), np.uint8)
    for (x1, y1, x2, y2), colour in zip(boxes.astype(int), colours, strict=True):
        image[y1:y2, x1:x2] = colour
    labels = np.array([3, 1, 0, 2])
    transform = build_transforms(128, train=True, hsv=False, scale=(0.5, 1.5), translate=0.2)
    transform.set_seed(0)
    seen = 0
    for _ in range(60):
        out, out_boxes, out_labels, _ = transform(image, boxes, labels)
        assert out.shape == (128, 128, 3)
        assert len(out_boxes) == len(out_labels) <= 4
        assert (out_boxes >= 0).all() and (out_boxes <= 128).all()
        assert (out_boxes[:, 2:] > out_boxes[:, :2]).all()
        for (x1, y1, x2, y2), label in zip(out_boxes, out_labels, strict=True):
            centre = out[int((y1 + y2) / 2), int((x1 + x2) / 2)].astype(int)
            expected = colours[np.flatnonzero(labels == label)[0]]
            assert np.abs(centre - expected).max() < 60
            seen += 1
    assert seen > 100


def test_train_transform_is_seeded_and_random() -> None:
    image = np.random.default_rng(1).integers(0, 255, (200, 260, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 100, 120]], np.float32)

    def run(seed: int) -> list[np.ndarray]:
        transform = build_transforms(96, train=True)
        transform.set_seed(seed)
        return [transform(image, boxes, np.array([0]))[0] for _ in range(6)]

    first, second, other = run(3), run(3), run(4)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert any(not np.array_equal(first[0], x) for x in first[1:])


def test_letterbox_info_numpy_and_torch_do_not_modify_inputs() -> None:
    info = LetterboxInfo(scale_x=0.5, scale_y=0.25, pad_x=2.0, pad_y=4.0, orig_h=100, orig_w=80)
    boxes = np.array([[10, 20, 30, 40], [0, 0, 80, 100]], np.float32)
    copy = boxes.copy()
    inp = info.to_input(boxes)
    np.testing.assert_allclose(inp, [[7, 9, 17, 14], [2, 4, 42, 29]])
    np.testing.assert_array_equal(boxes, copy)
    np.testing.assert_allclose(info.to_orig(inp), boxes)
    tensor = torch.tensor([[-10.0, 0.0, 100.0, 200.0]], dtype=torch.float64)
    back = info.to_orig(tensor)
    assert back.dtype == torch.float64 and tensor[0, 0] == -10.0
    torch.testing.assert_close(back, torch.tensor([[0.0, 0.0, 80.0, 100.0]], dtype=torch.float64))
    assert info.to_input(torch.zeros(0, 4)).shape == (0, 4)
    assert info.to_orig(np.array([[2, 4, 6, 8]])).dtype == np.float32


@pytest.mark.parametrize("train", [False, True])
def test_boxes_outside_the_image_are_dropped_and_bad_boxes_refused(train: bool) -> None:
    image = np.zeros((100, 80, 3), np.uint8)
    boxes = np.array([[90, 10, 120, 20], [10, 10, 10, 20], [-5, -5, 20, 20]], np.float32)
    transform = build_transforms(64, train=train, hflip=0.0, scale=(1.0, 1.0), translate=0.0)
    _, out_boxes, out_labels, _ = transform(image, boxes, np.array([0, 1, 2]))
    np.testing.assert_array_equal(out_labels, [2])
    np.testing.assert_allclose(out_boxes, [[0, 0, 20 * 51 / 80, 20 * 0.64]], atol=0.01)
    with pytest.raises(ValueError, match="xyxy"):
        transform(image, np.array([[10, 10, 5, 20]], np.float32), np.array([0]))
    with pytest.raises(ValueError, match="labels"):
        transform(image, boxes, np.array([0]))

"""Image decoding and the open-time probe: modes, depths, EXIF, truncation, non-images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from detkit.data.coco import CocoDataset
from detkit.data.images import (
    apply_orientation,
    decode_image,
    probe_image,
    read_image,
    sniff_format,
    to_rgb8,
)
from detkit.data.yolo import YoloDataset

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def _pil_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("gray.png", lambda p: Image.fromarray(RGB).convert("L").save(p)),
        ("gray.jpg", lambda p: Image.fromarray(RGB).convert("L").save(p, quality=100)),
        ("palette.png", lambda p: Image.fromarray(RGB).convert("P").save(p)),
        ("rgba.png", lambda p: Image.fromarray(np.dstack([RGB, RGB[..., 0]]), "RGBA").save(p)),
        ("la.png", lambda p: Image.fromarray(RGB).convert("LA").save(p)),
        ("rgb.bmp", lambda p: Image.fromarray(RGB).save(p)),
        ("rgb.webp", lambda p: Image.fromarray(RGB).save(p, lossless=True)),
        ("rgb.tif", lambda p: Image.fromarray(RGB).save(p)),
    ],
)
def test_any_mode_decodes_to_rgb8_like_pillow(tmp_path: Path, name: str, make) -> None:
    path = tmp_path / name
    make(path)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3) and out.flags.c_contiguous
    expected = _pil_rgb(path)  # grey expands to equal channels, alpha is dropped
    assert np.abs(out.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_is_scaled_not_clipped(tmp_path: Path, channels: int) -> None:
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    image = values if channels == 1 else np.dstack([values, values // 2, 65535 - values])
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), image if channels == 1 else image[..., ::-1])  # cv2 is BGR
    out = read_image(path)
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 4, 128, 255])  # v * 255 / 65535, rounded
    if channels == 3:
        np.testing.assert_array_equal(out[0, :, 2], [255, 251, 127, 0])


def test_to_rgb8_edge_cases() -> None:
    np.testing.assert_array_equal(to_rgb8(np.array([[0.0, 0.5, 1.0]]))[0, :, 1], [0, 128, 255])
    two = np.dstack([np.full((2, 2), 7, np.uint8), np.zeros((2, 2), np.uint8)])
    assert (to_rgb8(two) == 7).all()
    assert to_rgb8(np.array([[70000, -5]], dtype=np.int32))[0, :, 0].tolist() == [255, 0]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / "o.png"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(RGB).save(path, exif=exif)
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    probe = probe_image(path)
    assert probe.orientation == orientation
    np.testing.assert_array_equal(read_image(path, probe.orientation), expected)
    np.testing.assert_array_equal(read_image(path), RGB)  # stored pixels unless asked
    assert probe.shown_size() == expected.shape[:2]
    with pytest.raises(ValueError, match=r"1\.\.8"):
        apply_orientation(RGB, 9)


def _jpeg(path: Path) -> bytes:
    assert cv2.imwrite(str(path), RGB)
    return path.read_bytes()


def test_probe_finds_missing_empty_non_image_and_truncated(tmp_path: Path) -> None:
    data = _jpeg(tmp_path / "ok.jpg")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "tail.jpg").write_bytes(data + b"camera maker notes" * 10)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    Image.fromarray(RGB).save(tmp_path / "ok.png")
    png = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[:-20])
    problems = {
        name: probe_image(tmp_path / name).problem
        for name in ("ok.jpg", "tail.jpg", "ok.png", "cut.jpg", "cut.png", "empty.jpg", "text.jpg")
    }
    problems["gone.jpg"] = probe_image(tmp_path / "gone.jpg").problem
    assert problems == {
        "ok.jpg": "",
        "tail.jpg": "",  # data after the end marker is not truncation
        "ok.png": "",
        "cut.jpg": "image_truncated",
        "cut.png": "image_truncated",
        "empty.jpg": "image_unreadable",
        "text.jpg": "image_unreadable",
        "gone.jpg": "image_missing",
    }
    # What the probe protects against: OpenCV "decodes" the cut file into grey garbage.
    assert cv2.imread(str(tmp_path / "cut.jpg")) is not None
    with pytest.raises(ValueError, match=r"text\.jpg"):
        read_image(tmp_path / "text.jpg")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "gone.jpg")


def test_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, write_image, bomb_png
) -> None:
    (tmp_path / "images").mkdir()
    bomb_png(tmp_path / "images" / "bomb.png", 30000, 30000)
    probe = probe_image(tmp_path / "images" / "bomb.png")
    assert probe.problem == "image_too_large" and "pixels" in probe.detail
    bomb_png(tmp_path / "images" / "big.png", 12000, 9000)  # under Pillow's hard limit
    with pytest.warns(Image.DecompressionBombWarning):  # readers silence it and count instead
        assert probe_image(tmp_path / "images" / "big.png").width == 12000
    write_image(tmp_path / "images" / "ok.png", (20, 20))
    images = [
        {"id": k, "file_name": n, "height": h, "width": w}
        for k, (n, h, w) in enumerate(
            [("bomb.png", 30000, 30000), ("big.png", 9000, 12000), ("ok.png", 20, 20)], start=1
        )
    ]
    doc = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    dataset = CocoDataset(tmp_path / "ann.json", tmp_path / "images", max_pixels=10**8)
    assert dataset.image_ids == [3]
    assert dataset.report.count("image_too_large") == 2


def _rotated_scene(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A JPEG stored 40x60 with EXIF orientation 6; a red block; its box in both frames."""
    stored = np.full((40, 60, 3), 30, np.uint8)
    stored[5:15, 10:30] = (255, 0, 0)
    shown = np.rot90(stored, -1)  # what a viewer (and so the labeller) sees: 60 x 40
    path = tmp_path / "images" / "photo.jpg"
    path.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, quality=95, exif=exif)

    def box(image: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(image[..., 0] > 128)
        return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)

    return path, box(shown), box(stored)


def _red_box(image: np.ndarray) -> list[int]:
    ys, xs = np.nonzero((image[..., 0] > 150) & (image[..., 1] < 100))
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("labelled_on", ["shown", "stored"])
def test_exif_rotated_jpeg_boxes_land_where_the_labeller_saw(
    tmp_path: Path, labelled_on: str
) -> None:
    _, shown_box, stored_box = _rotated_scene(tmp_path)
    box, (h, w) = (shown_box, (60, 40)) if labelled_on == "shown" else (stored_box, (40, 60))
    x1, y1, x2, y2 = box.tolist()
    doc = {
        "images": [{"id": 1, "file_name": "photo.jpg", "height": h, "width": w}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1]}
        ],
        "categories": [{"id": 1, "name": "block"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    dataset = CocoDataset(tmp_path / "ann.json", tmp_path / "images", cache_dir=tmp_path / "c")
    sample = dataset.load(0)
    assert sample.image.shape[:2] == (h, w)
    np.testing.assert_allclose(sample.boxes[0], box)
    assert np.abs(np.array(_red_box(sample.image)) - box).max() <= 1
    kind = "image_exif" if labelled_on == "shown" else "image_exif_ignored"
    assert dataset.report.count(kind) == 1


def test_exif_rotated_jpeg_in_yolo_is_shown_upright(tmp_path: Path) -> None:
    _, shown_box, _ = _rotated_scene(tmp_path)
    cx, cy = (shown_box[0] + shown_box[2]) / 2 / 40, (shown_box[1] + shown_box[3]) / 2 / 60
    bw, bh = (shown_box[2] - shown_box[0]) / 40, (shown_box[3] - shown_box[1]) / 60
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "photo.txt").write_text(f"0 {cx} {cy} {bw} {bh}\n")
    (tmp_path / "data.yaml").write_text("train: images\nnames: [block]\n")
    sample = YoloDataset(tmp_path / "data.yaml", "train").load(0)
    assert sample.image.shape[:2] == (60, 40)
    np.testing.assert_allclose(sample.boxes[0], shown_box, atol=1e-4)
    assert np.abs(np.array(_red_box(sample.image)) - shown_box).max() <= 1


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("ps.jpg", b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"),
        ("svg.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
        ("eps.jpg", b"\xc5\xd0\xd3\xc6" + b"\x00" * 40),
        ("gif.jpg", b"GIF89a" + b"\x00" * 40),
    ],
)
def test_formats_outside_the_allowlist_reach_no_decoder(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert sniff_format(content) is None
    probe = probe_image(path)
    assert probe.problem == "image_unreadable" and "allowed image format" in probe.detail
    with pytest.raises(ValueError, match=rf"{name}.*not an allowed image format"):
        read_image(path)


def test_a_real_gif_is_refused_too(tmp_path: Path) -> None:
    Image.fromarray(RGB).convert("P").save(tmp_path / "anim.gif")
    with pytest.raises(ValueError, match="not an allowed image format"):
        read_image(tmp_path / "anim.gif")


def test_file_name_that_is_not_utf8_decodes(tmp_path: Path) -> None:
    path = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.jpg"))  # Latin-1 e-acute
    Image.fromarray(RGB).save(path, quality=100, subsampling=0)
    assert probe_image(path).problem == ""
    assert np.abs(read_image(path).astype(int) - RGB).max() <= 4
    (tmp_path / "labels").mkdir()
    Path(os.fsdecode(os.fsencode(tmp_path) + b"/labels/caf\xe9.txt")).write_text("0 .5 .5 .2 .2\n")
    (tmp_path / "data.yaml").write_text("train: .\nnames: [a]\n")
    dataset = YoloDataset(tmp_path / "data.yaml", "train")
    assert len(dataset) == 1 and dataset.load(0).image.shape == (20, 30, 3)


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path, bomb_png) -> None:
    bomb_png(tmp_path / "big.png", 12000, 9000)
    data = (tmp_path / "big.png").read_bytes()
    assert len(data) < 100
    with pytest.raises(ValueError, match=r"12000x9000 px > max_pixels=89478485"):
        decode_image(data)
    with pytest.raises(ValueError, match=r"12000x9000 px > max_pixels=1000"):
        decode_image(data, max_pixels=1000)
    bomb_png(tmp_path / "bomb.png", 20000, 20000)  # over Pillow's own hard limit
    with pytest.raises(ValueError, match=r"bomb\.png: .*decompression bomb"):
        read_image(tmp_path / "bomb.png", max_pixels=10**12)


def test_16_bit_rule_is_the_same_for_files_and_arrays(tmp_path: Path) -> None:
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "d.png"), values)
    expected = [0, 1, 4, 128, 255]  # v * 255 / 65535 rounded; v >> 8 gives 0, 1, 3, 128, 255
    np.testing.assert_array_equal(read_image(tmp_path / "d.png")[0, :, 1], expected)
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I")
        np.testing.assert_array_equal(to_rgb8(np.asarray(im))[0, :, 1], expected)


def test_exif_rule_none_applies_the_files_tag(tmp_path: Path) -> None:
    path = tmp_path / "o.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(RGB).save(path, exif=exif)
    np.testing.assert_array_equal(read_image(path, None), np.rot90(RGB, -1))
    np.testing.assert_array_equal(read_image(path), RGB)

"""The full decode at scan time, its cache, and a file that breaks mid-epoch."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from detkit.data import DetectionDataset, YoloDataset, build_transforms, collate
from detkit.data.images import probe_image
from detkit.data.scan import cache_file_for, decode_problems

RNG = np.random.default_rng(0)
IMAGE = cv2.GaussianBlur(RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8), (5, 5), 0)


def _encode(ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, IMAGE)
    assert ok
    return buf.tobytes()


def _damaged_png() -> bytes:
    """A complete PNG (IEND present, CRCs valid) whose compressed pixel data is damaged."""
    data = bytearray(_encode(".png"))
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4 : start])[0]
    for k in range(10, length - 4, 7):
        data[start + 4 + k] ^= 0x5A
    crc = zlib.crc32(bytes(data[start : start + 4 + length])) & 0xFFFFFFFF
    data[start + 4 + length : start + 8 + length] = struct.pack(">I", crc)
    return bytes(data)


BAD = {
    # cut at two thirds, with an end marker the header probe finds in the last kilobyte
    "cut_ffd9.jpg": lambda: _encode(".jpg")[: len(_encode(".jpg")) * 2 // 3] + b"\xff\xd9",
    "damaged.png": _damaged_png,
    # decodes, but libjpeg prints "Corrupt JPEG data: 20 extraneous bytes before marker 0xd9"
    "warns.jpg": lambda: _encode(".jpg")[:-2] + b"\x12\x34" * 10 + b"\xff\xd9",
}


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A YOLO split: two good images and the three corrupt-but-complete files of ``BAD``."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    files = {"good.jpg": _encode(".jpg"), "good.png": _encode(".png")}
    files |= {name: make() for name, make in BAD.items()}
    for name, data in files.items():
        (tmp_path / "images" / name).write_bytes(data)
        (tmp_path / "labels" / f"{Path(name).stem}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (tmp_path / "data.yaml").write_text("train: images\nnames: [a]\n")
    return tmp_path


def _open(root: Path, workers: int | None = 2) -> YoloDataset:
    return YoloDataset(
        root / "data.yaml", "train", cache_dir=root / "cache", decode_workers=workers
    )


def test_header_probe_admits_the_corrupt_files(messy: Path) -> None:
    """What the scan adds: the probe alone lets all three through."""
    for name in BAD:
        assert probe_image(messy / "images" / name).problem == "", name


@pytest.mark.parametrize("workers", [0, 2])
def test_full_decode_skips_and_counts_corrupt_files(messy: Path, workers: int) -> None:
    dataset = _open(messy, workers)
    assert sorted(Path(dataset.image_path(i)).name for i in range(len(dataset))) == [
        "good.jpg",
        "good.png",
    ]
    report = dataset.report
    assert report.count("image_corrupt") == 3 and report.kept == 2
    examples = "\n".join(report.issues["image_corrupt"].examples)
    assert "warns.jpg: decoder warning: Corrupt JPEG data" in examples
    assert "damaged.png" in examples and "cut_ffd9.jpg" in examples


def test_verdicts_are_cached_on_size_mtime_and_version(messy: Path) -> None:
    cache = cache_file_for(messy / "cache", _open(messy).images_root)
    doc = json.loads(cache.read_text())
    assert set(doc["policy"]) == {"detkit", "max_pixels"} and len(doc["files"]) == 5
    good = os.path.abspath(messy / "images" / "good.png")
    size, mtime_ns, reason = doc["files"][good]
    assert (size, mtime_ns, reason) == (
        os.stat(good).st_size,
        os.stat(good).st_mtime_ns,
        "",
    )
    # A planted verdict is believed while size and mtime match: the file is not decoded again.
    doc["files"][good][2] = "planted"
    cache.write_text(json.dumps(doc))
    assert _open(messy).report.count("image_corrupt") == 4
    # A new mtime (or another detkit version) makes it decode again.
    os.utime(good, ns=(mtime_ns + 10**9, mtime_ns + 10**9))
    assert _open(messy).report.count("image_corrupt") == 3
    doc = json.loads(cache.read_text())
    doc["files"][good][2] = "planted"
    doc["policy"]["detkit"] = "0.0.0"
    cache.write_text(json.dumps(doc))
    assert _open(messy).report.count("image_corrupt") == 3


def test_decode_problems_without_cache_names_each_reason(messy: Path) -> None:
    paths = [messy / "images" / n for n in ("good.jpg", "warns.jpg", "missing.jpg")]
    reasons = decode_problems(paths, max_pixels=10**8, workers=1)
    assert reasons[0] == ""
    assert reasons[1].startswith("decoder warning: Corrupt JPEG data")
    assert "not found" in reasons[2]


def test_file_broken_mid_epoch_is_replaced_and_counted(messy: Path) -> None:
    source = _open(messy)
    dataset = DetectionDataset(source, build_transforms(64, train=False))
    victim = next(i for i in range(len(source)) if Path(source.image_path(i)).suffix == ".png")
    source.image_path(victim).write_bytes(b"gone bad after the scan")
    item = dataset[victim]
    assert item["path"] == str(source.image_path((victim + 1) % len(source)))
    assert len(item["failed"]) == 1 and "not an allowed image format" in item["failed"][0]
    batch = collate([dataset[i] for i in range(len(source))])
    assert len(batch) == len(source) and len(batch.failed) == 1

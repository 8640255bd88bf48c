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


def _damage_in_place(path: Path) -> None:
    """Zero 40 bytes of entropy-coded data: same size, same mtime (set back), a decoder
    warning; only the inode's ctime tells."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 40] = bytes(0xFF if b == 0xFF else 0 for b in data[mid : mid + 40])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


def _reopen(root: Path) -> YoloDataset:
    """Open again with the split cache out of the way (a new label file content), so the
    decode verdicts are what decides."""
    label = root / "labels" / "good.txt"
    label.write_text(label.read_text() + "\n")
    return _open(root)


def test_verdicts_are_keyed_on_content_signed_and_pruned(
    messy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = cache_file_for(messy / "cache", _open(messy).images_root)
    doc = json.loads(cache.read_text())
    assert set(doc["policy"]) == {"max_pixels", "decoders"} and len(doc["files"]) == 5
    assert set(doc["policy"]["decoders"]) == {"detkit", "opencv", "pillow"}
    good = os.path.abspath(messy / "images" / "good.jpg")
    st = os.stat(good)
    assert doc["files"][good] == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, ""]
    # a file damaged in place, same size and mtime: decoded again, found
    _damage_in_place(Path(good))
    assert _reopen(messy).report.count("image_corrupt") == 4
    # a hand-edited verdict is not believed: the digest no longer matches
    doc = json.loads(cache.read_text())
    doc["files"][good][4] = ""
    cache.write_text(json.dumps(doc))
    assert _reopen(messy).report.count("image_corrupt") == 4
    # another decoder's verdicts do not hold
    import detkit.data.scan as scan

    decoded: list[int] = []
    real = scan._decode_all
    monkeypatch.setattr(scan, "_decode_all", lambda p, *a: decoded.append(len(p)) or real(p, *a))
    assert _reopen(messy).report.count("image_corrupt") == 4 and decoded == []
    monkeypatch.setattr(scan, "decoder_versions", lambda: {"opencv": "another"})
    assert _reopen(messy).report.count("image_corrupt") == 4 and decoded == [5]
    # entries of files gone are dropped when the cache is written
    (messy / "images" / "damaged.png").unlink()
    (messy / "images" / "new.jpg").write_bytes(_encode(".jpg"))
    (messy / "labels" / "new.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    _reopen(messy)
    names = {Path(n).name for n in json.loads(cache.read_text())["files"]}
    assert names == {"good.jpg", "good.png", "cut_ffd9.jpg", "warns.jpg", "new.jpg"}


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
    assert len(item["failed"]) == 1 and "changed since the split was checked" in item["failed"][0]
    batch = collate([dataset[i] for i in range(len(source))])
    assert len(batch) == len(source) and len(batch.failed) == 1


def test_a_file_changed_in_place_after_the_scan_is_not_trained_on(messy: Path) -> None:
    # same size, same mtime: only the inode's ctime tells; its pixels would be garbage
    source = _open(messy)
    dataset = DetectionDataset(source, build_transforms(64, train=False))
    victim = next(i for i in range(len(source)) if Path(source.image_path(i)).suffix == ".jpg")
    _damage_in_place(source.image_path(victim))
    item = dataset[victim]
    assert item["path"] != str(source.image_path(victim))
    assert "changed since the split was checked" in item["failed"][0]


def test_a_decoder_warning_during_an_epoch_is_counted(
    messy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the scan missed it (pretend): a loader worker hears the decoder warn and counts it as
    # the scan would have, instead of training on the damaged pixels
    import detkit.data.source as source_module
    from detkit.data import build_loader

    monkeypatch.setattr(source_module, "decode_problems", lambda paths, *a, **k: [""] * len(paths))
    source = _open(messy)
    names = [Path(source.image_path(i)).name for i in range(len(source))]
    assert "warns.jpg" in names
    dataset = DetectionDataset(source, build_transforms(64, train=False))
    with build_loader(dataset, len(source), train=False, workers=1, seed=0) as loader:
        batch = next(iter(loader))
    failed = "\n".join(batch.failed)
    assert "warns.jpg: damaged since the split was checked (decoder warning: Corrupt JPEG" in failed

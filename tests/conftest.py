"""Shared fixtures: tiny datasets written into temporary folders (CPU only, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detkit.data.synthetic import generate_shapes


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module (``pytestmark = usefixtures("one_thread")``).

    ``pytest -n 2`` already puts a process on each of the 2 cores; OpenMP threads competing for
    them make small convolutions and training steps several times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes dataset with 8 train and 4 val images (seed 0); treat it as read-only."""
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "tiny", num_train=8, num_val=4)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training tests' shapes set: 16 train and 4 val images (seed 11); read-only."""
    return generate_shapes(tmp_path_factory.mktemp("train") / "shapes", 16, 4, seed=11)


@pytest.fixture(scope="session")
def shapes32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 train and 4 val images (seed 13), for runs of two ranks or several loader workers."""
    return generate_shapes(tmp_path_factory.mktemp("train32") / "shapes", 32, 4, seed=13)


@pytest.fixture(scope="session")
def tiny_formats(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``tiny_shapes`` written by detkit's writers as COCO, VOC and YOLO (read-only roots).

    Keys ``coco`` (the original), ``voc`` (a year folder: splits ``train``/``val``) and ``yolo``
    (holding ``data.yaml``).
    """
    from detkit.data import CocoDataset, convert_dataset, shapes_split

    out = tmp_path_factory.mktemp("formats")
    sources = {
        split: CocoDataset(*shapes_split(tiny_shapes, split), cache_dir=out / "cache")
        for split in ("train", "val")
    }
    roots = {"coco": tiny_shapes}
    for fmt in ("voc", "yolo"):
        roots[fmt] = out / fmt
        convert_dataset(sources, fmt, roots[fmt])
    return roots


@pytest.fixture
def write_image():
    """``write_image(path, array_or_hw, ...)``: write an image file (RGB order) for a test.

    Pass an ``[H, W, 3]`` uint8 RGB array, or ``(height, width)`` for a mid-grey image.
    """
    import cv2
    import numpy as np

    def write(path: Path, image: object = (32, 48)) -> Path:
        array = np.full((*image, 3), 128, np.uint8) if isinstance(image, tuple) else image
        path.parent.mkdir(parents=True, exist_ok=True)
        bgr = array[..., ::-1] if array.ndim == 3 else array
        ok, data = cv2.imencode(path.suffix, np.ascontiguousarray(bgr))  # any name, not UTF-8 too
        assert ok
        path.write_bytes(data.tobytes())
        return path

    return write


@pytest.fixture(autouse=True, scope="session")
def _private_detkit_home(tmp_path_factory: pytest.TempPathFactory):
    """Caches (decode verdicts, converted ground truth) go to a folder of the test session, not
    the user's ``~/.cache/detkit``."""
    import os

    old = os.environ.get("DETKIT_HOME")
    os.environ["DETKIT_HOME"] = str(tmp_path_factory.mktemp("detkit_home"))
    yield
    if old is None:
        os.environ.pop("DETKIT_HOME", None)
    else:
        os.environ["DETKIT_HOME"] = old


@pytest.fixture
def bomb_png():
    """``bomb_png(path, width, height)``: a tiny PNG whose header claims ``width x height``
    (a decompression bomb's signature; valid CRC)."""
    import struct
    import zlib

    import cv2
    import numpy as np

    def write(path: Path, width: int, height: int) -> Path:
        assert cv2.imwrite(str(path), np.zeros((1, 1, 3), np.uint8))
        data = bytearray(path.read_bytes())
        start = data.index(b"IHDR")
        data[start + 4 : start + 12] = struct.pack(">II", width, height)
        crc = zlib.crc32(bytes(data[start : start + 17])) & 0xFFFFFFFF
        data[start + 17 : start + 21] = struct.pack(">I", crc)
        path.write_bytes(bytes(data))
        return path

    return write

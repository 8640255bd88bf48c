"""200 mutated JPEG/PNG files (fixed seed) through check_data, one epoch of training and infer,
each in its own process: every file works or is skipped and counted; no crash, no signal, no
traceback, no hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NUM_FUZZ, NUM_GOOD = 200, 32
LIMIT_S = 240  # far above what each run takes here (see the durations printed by pytest)


def _good_image(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A grey image with one filled rectangle around the centre (the label of every file)."""
    image = np.full((size, size, 3), int(rng.integers(60, 200)), np.uint8)
    c = tuple(int(v) for v in rng.integers(0, 255, 3))
    cv2.rectangle(image, (34, 34), (62, 62), c, -1)
    return image


def _mutate(data: bytes, kind: int, rng: np.random.Generator) -> bytes:
    """One of eight damages: cut short, flipped body bytes, a zeroed block, flipped header
    bytes, garbage appended, garbage inserted, a block repeated, or left whole (the PNG/JPEG
    mix-up of its extension does the damage)."""
    b = bytearray(data)
    n = len(b)
    if kind == 0:
        return bytes(b[: int(n * rng.uniform(0.1, 0.95))])
    if kind == 1:
        for i in rng.integers(64, n, int(rng.integers(1, 20))):
            b[i] ^= 0xFF
    elif kind == 2:
        start = int(rng.integers(64, n - 64))
        end = min(n, start + int(rng.integers(16, 256)))
        b[start:end] = bytes(end - start)
    elif kind == 3:
        for i in rng.integers(0, 64, 4):
            b[i] = int(rng.integers(0, 256))
    elif kind == 4:
        b += rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
    elif kind == 5:
        at = int(rng.integers(32, n))
        b[at:at] = rng.integers(0, 256, int(rng.integers(1, 512)), dtype=np.uint8).tobytes()
    elif kind == 6:
        start = int(rng.integers(32, n // 2))
        b[start:start] = b[start : start + int(rng.integers(8, 512))]
    return bytes(b)


@pytest.fixture(scope="module")
def fuzz_set(tmp_path_factory) -> Path:
    """A YOLO-layout dataset: 32 good train images, 200 mutated ones, 8 good val images."""
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(2026)
    for split, count in (("train", NUM_GOOD + NUM_FUZZ), ("val", 8)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for k in range(count):
            image = _good_image(rng)
            png = k % 2 == 1
            ok, encoded = cv2.imencode(".png" if png else ".jpg", image)
            assert ok
            data, suffix = encoded.tobytes(), ".png" if png else ".jpg"
            if split == "train" and k >= NUM_GOOD:
                kind = (k - NUM_GOOD) % 8
                data = _mutate(data, kind, rng)
                if kind == 7:
                    suffix = ".jpg" if png else ".png"  # the other format's name
            name = f"{split}_{k:04d}"
            (root / "images" / split / f"{name}{suffix}").write_bytes(data)
            (root / "labels" / split / f"{name}.txt").write_text("0 0.5 0.5 0.3 0.3\n")
    (root / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames: {0: box}\n"
    )
    return root


def _run(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``tools/<tool>.py args`` in a fresh process; a crash would show as a negative status."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / f"tools/{tool}.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=LIMIT_S,
    )  # fmt: skip
    assert done.returncode >= 0, (
        f"{tool} killed by signal {-done.returncode}: {done.stderr[-2000:]}"
    )
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def test_fuzzed_images_are_each_used_or_skipped_and_counted(fuzz_set, tmp_path):
    data = f"data={fuzz_set / 'data.yaml'}"
    files = sorted((fuzz_set / "images/train").iterdir())
    assert len(files) == NUM_GOOD + NUM_FUZZ

    check = _run("check_data", data, "skip_invalid=true", "--name", "fuzz", cwd=tmp_path)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    report = json.loads((tmp_path / "runs/check_data/fuzz/data_report.json").read_text())
    train = report["train"]
    assert train["images"] == len(files) and NUM_GOOD <= train["kept"] < len(files)
    assert sum(v["count"] for v in train["issues"].values()) >= len(files) - train["kept"]

    trained = _run(
        "train", data, "skip_invalid=true", "epochs=1", "img_size=64", "batch=16", "workers=2",
        "device=cpu", "name=fuzz", "plots=false", cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    weights = tmp_path / "runs/train/fuzz/last.pt"
    assert weights.is_file()

    inferred = _run(
        "infer", str(fuzz_set / "images/train"), "--weights", str(weights), "--no-save",
        cwd=tmp_path,
    )  # fmt: skip
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    out = tmp_path / "runs/infer/exp"
    records = json.loads((out / "detections.json").read_text())
    skipped = (
        json.loads((out / "skipped.json").read_text()) if (out / "skipped.json").exists() else []
    )
    assert len(records) + len(skipped) == len(files)
    assert {Path(r["image"]).name for r in records} | {Path(s["source"]).name for s in skipped} == {
        f.name for f in files
    }
    assert all(s["reason"] for s in skipped) and len(records) >= NUM_GOOD
    assert len(records) == train["kept"]  # infer skips what training skips, no more, no less
    print(
        f"fuzz: check_data kept {train['kept']} of {len(files)}; infer read {len(records)}, skipped {len(skipped)}"
    )

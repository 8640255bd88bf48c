"""The benchmark scripts run end to end on tiny settings and print their ratio tables (so
``make bench`` cannot rot unnoticed). Their numbers are not checked: timings are never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "bench_boxes.py": ["--repeats", "1", "--threads", "1"],
    "bench_data.py": ["--images", "4", "--repeats", "1", "--sizes", "64", "--workers", "0"],
    "bench_infer.py": ["--repeats", "1", "--threads", "1", "--sizes", "64", "--models", "yolo_tiny"],
    "bench_models.py": ["--repeats", "1", "--threads", "1", "--img-size", "64",
                        "--models", "yolo_tiny", "ssdlite320"],
    "bench_train.py": ["--img-size", "64", "--batch", "2", "--steps", "1", "--warmup", "1",
                       "--workers", "0", "--threads", "1"],
    # installs Ultralytics into bench/.peer/venv once (PyPI), then ~2 minutes
    "bench_peer.py": ["--epochs", "1", "--num-train", "16", "--num-val", "4", "--img-size", "64",
                      "--batch", "4", "--repeats", "1"],
}  # fmt: skip


def test_every_benchmark_script_is_covered() -> None:
    assert sorted(p.name for p in (ROOT / "bench").glob("bench_*.py")) == sorted(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_and_prints_a_table(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *CASES[script]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert len(rows) >= 3, out.stdout  # header, rule, at least one measured row

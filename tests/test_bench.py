"""The benchmark scripts run end to end on tiny settings and print their ratio tables (so
``make bench`` cannot rot unnoticed). Their numbers are not checked: timings are never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "bench_boxes.py": ["--repeats", "1", "--threads", "1"],
    "bench_data.py": ["--images", "4", "--repeats", "1", "--sizes", "64", "--workers", "0"],
    "bench_infer.py": ["--repeats", "1", "--threads", "1", "--sizes", "64", "--models", "yolo_tiny"],
    "bench_models.py": ["--repeats", "1", "--threads", "1", "--img-size", "64",
                        "--models", "yolo_tiny", "ssdlite320"],
    "bench_train.py": ["--img-size", "64", "--batch", "2", "--steps", "1", "--warmup", "1",
                       "--workers", "0", "--threads", "1"],
    "bench_finetune.py": ["--pre-epochs", "1", "--epochs", "1", "--num-train", "16", "--num-ft",
                          "8", "--num-val", "4", "--img-size", "64", "--batch", "4",
                          "--backbones", "mobilenet_v3_large", "--work", "work"],
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


@pytest.mark.slow  # over 5 s: two processes or a subprocess start torch
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only skip")
def test_gpu_check_skips_cleanly_without_cuda() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(ROOT / "bench/gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gpu_check: no CUDA GPU on this machine: skipped"


def test_gpu_check_configurations_are_valid_configs(tmp_path: Path) -> None:
    """What gpu_check.py would train parses into configs (its GPU runs cannot run here)."""
    import argparse
    import importlib.util

    from detkit.config import load_config

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(model="yolo_n", img_size=640, batch=16, steps=20, workers=4)
    for extra in module.CONFIGS.values():
        cfg = load_config(overrides=[*module.base_overrides(args, tmp_path, tmp_path), *extra])
        assert cfg.train.img_size == 640 and cfg.train.max_steps == 20

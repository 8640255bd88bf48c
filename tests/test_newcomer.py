"""A newcomer's commands as typed, each in its own process with stderr on a pipe (as in CI or a
log file): a COCO file exported by another tool, an Ultralytics data.yaml, Ultralytics habits
(``imgsz=``, ``device=0``, ``conf=``). Each works, or ends in one line naming the fix; none ends
in a traceback. Slow: real training runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_data_cli import _foreign_coco

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _tool(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python tools/<tool>.py args...`` in ``cwd``; stdout and stderr captured (not a TTY)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "tools" / f"{tool}.py"), *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    """The error line of a failed command (exit status 2), checked to be its only one."""
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, out.stderr
    return errors[0]


def test_a_foreign_coco_file_trains_evaluates_infers_and_converts(tiny_shapes, tmp_path):
    # kwcoco's export: absolute image paths, an unused "background" category 0, no iscrowd
    path = _foreign_coco(tiny_shapes, tmp_path / "kw")
    before = path.read_bytes()
    train = _tool("train", f"data={path}", "imgsz=64", "epochs=2", "batch=4", "workers=0",
                  cwd=tmp_path)  # fmt: skip
    assert train.returncode == 0, train.stderr
    err = train.stderr
    assert "\r" not in err  # not a terminal: whole lines, not one \r update per batch
    bars = [line.split(":")[0] for line in err.splitlines() if "%|" in line]
    assert bars == ["epoch 1/2", "epoch 2/2"]  # short epochs: one line each
    assert err.count("filled 'iscrowd' = 0") == 1  # once per run, not at every validation
    assert "initial losses: box" in err
    weights = tmp_path / "runs/train/exp/best.pt"
    assert weights.is_file()

    ev = _tool("eval", "--weights", str(weights), f"data={path}", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert (ev.stdout + ev.stderr).count("filled 'iscrowd' = 0") == 1
    metrics = json.loads((tmp_path / "runs/eval/exp/metrics.json").read_text())
    names = {row["category_id"]: row["name"] for row in metrics["errors"]["per_class"]}
    assert names[0] == "category 0 (not a model class)" and set(names) == {0, 2, 3, 4, 5}
    assert [row["category_id"] for row in metrics["per_class"]] == [2, 3, 4, 5]

    image = json.loads(before)["images"][0]["file_name"]  # an absolute path
    infer = _tool("infer", image, "conf=0.5", cwd=tmp_path)  # newest runs/train/*/best.pt
    assert infer.returncode == 0, infer.stderr
    assert f"weights: {Path('runs/train/exp/best.pt')}" in infer.stdout + infer.stderr
    line = _one_error_line(_tool("infer", image, "conf=1.5", cwd=tmp_path))
    assert "argument --conf: a threshold lies in [0, 1], got 1.5" in line
    if not torch.cuda.is_available():
        line = _one_error_line(_tool("infer", image, "device=0", cwd=tmp_path))
        assert "use device=cpu" in line

    convert = _tool("convert", str(path), str(tmp_path / "as-yolo"), "--to", "yolo", cwd=tmp_path)
    assert convert.returncode == 0 and "train: 8 images" in convert.stdout
    assert path.read_bytes() == before  # nothing written into the user's file


def test_an_ultralytics_data_yaml_trains_or_names_the_batch_to_use(tiny_formats, tmp_path):
    data = tiny_formats["yolo"] / "data.yaml"
    args = (f"data={data}", "imgsz=320", "epochs=1", "workers=0")
    line = _one_error_line(_tool("train", *args, cwd=tmp_path))
    assert line == (
        "error: the training split has 8 images, fewer than one batch of 32 per process; "
        "lower batch, e.g. batch=8"
    )
    assert _tool("train", *args, "batch=8", cwd=tmp_path).returncode == 0
    if not torch.cuda.is_available():
        line = _one_error_line(_tool("train", *args, "batch=8", "device=0", cwd=tmp_path))
        assert line == "error: device 'cuda:0' requested but CUDA is not available; use device=cpu"

"""train -> eval -> infer through the command line, in-process, on a tiny generated dataset."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from detkit.cli import main
from detkit.data import generate_shapes
from detkit.inference.predict import Detector
from detkit.models.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    return generate_shapes(root, num_train=24, num_val=8, seed=3)


@pytest.fixture(scope="module")
def learned_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "learn"
    return generate_shapes(root, num_train=256, num_val=16, seed=0)


# 12 epochs of 256 images at 96 px, one thread: ~30 s, and a deterministic mAP50 of 0.398 on
# the 16 val images (2026-11-30); the floor leaves room for other torch builds.
LEARNED_MAP50 = 0.25


def test_train_eval_infer_export_learn(learned_shapes, tmp_path, monkeypatch, capsys):
    """The default model and recipe learn (a mAP floor, not 0 <= mAP <= 1), and what is
    measured is what infer and an NMS export give on the same images."""
    monkeypatch.chdir(tmp_path)
    args = [
        f"root={learned_shapes}", "num_train=256", "num_val=16", "epochs=12", "batch=16",
        "img_size=96", "workers=0", "quiet=true", "name=e2e", "device=cpu",
    ]  # fmt: skip
    assert main(["train", *args]) == 0
    run = tmp_path / "runs/train/e2e"
    assert {"last.pt", "best.pt", "metrics.csv", "config.yaml", "data_report.txt"} <= {
        p.name for p in run.iterdir()
    }
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    assert float(rows[-1]["mAP50"]) > 5 * float(rows[0]["mAP50"])  # it learned, epoch by epoch
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 12 and ckpt["step"] == 12 * 16
    assert ckpt["deploy"]["img_size"] == 96 and ckpt["deploy"]["class_names"]

    assert main(["eval", "--weights", str(run / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert "Average Precision" in out and "mAP50-95" in out
    metrics = json.loads((tmp_path / "runs/eval/e2e/metrics.json").read_text())
    assert metrics["mAP50"] >= LEARNED_MAP50
    # best.pt holds the validated EMA weights rounded to float16 (a finished run's slim
    # checkpoint): the same mAP to float16 rounding (8e-5 seen), and exactly what the run's
    # own evaluation of best.pt wrote
    assert metrics["mAP50"] == pytest.approx(max(float(r["mAP50"]) for r in rows), abs=1e-3)
    assert metrics["mAP50"] == json.loads((run / "best_metrics.json").read_text())["mAP50"]

    images = sorted((learned_shapes / "images/val").iterdir())[:4]
    assert main(["infer", str(learned_shapes / "images/val")]) == 0  # newest best.pt, conf 0.25
    records = json.loads((tmp_path / "runs/infer/exp/detections.json").read_text())
    assert len(records) == 16 and sum(len(r["detections"]) for r in records) >= 8
    assert (tmp_path / "runs/infer/exp" / images[0].name).is_file()

    pytest.importorskip("onnxruntime")
    assert main(["export", "--weights", str(run / "best.pt"), "--nms", "--output", "m.onnx"]) == 0
    torch_det = Detector.from_checkpoint(run / "best.pt", device="cpu")
    onnx_det = Detector.from_checkpoint(tmp_path / "m.onnx")
    found = 0
    for image in images:  # at conf 0.25, where both sides find objects
        a, b = torch_det.predict(str(image)), onnx_det.predict(str(image))
        assert a.labels.tolist() == b.labels.tolist()
        assert np.allclose(a.boxes.numpy(), b.boxes.numpy(), atol=1e-2)
        found += len(a)
    assert found >= 2


def test_resume_extends_a_finished_run(tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        f"root={tiny_shapes}",
        "num_train=24",
        "num_val=8",
        "epochs=1",
        "batch=8",
        "img_size=96",
        "workers=0",
        "quiet=true",
        "name=r",
        "device=cpu",
    ]
    assert main(["train", *args]) == 0
    last = tmp_path / "runs/train/r/last.pt"
    assert main(["train", "--resume", str(last)]) == 2  # finished: asks for more epochs
    assert main(["train", "--resume", str(last), "epochs=2"]) == 0
    assert load_checkpoint(last)["epoch"] == 2


def test_user_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "epochz=3"]) == 2
    assert "unknown key 'epochz'" in capsys.readouterr().err
    assert main(["infer", "nothing.jpg"]) == 2
    assert "best.pt" in capsys.readouterr().err

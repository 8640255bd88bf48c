"""train -> eval -> infer through the command line, in-process, on a tiny generated dataset."""

from __future__ import annotations

import csv
import json

import pytest

from detkit.cli import main
from detkit.data import generate_shapes
from detkit.engine.checkpoint import load_checkpoint
from detkit.predict import Detector

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    return generate_shapes(root, num_train=24, num_val=8, seed=3)


def test_train_eval_infer(tiny_shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [
        f"root={tiny_shapes}",
        "num_train=24",
        "num_val=8",
        "epochs=2",
        "batch=8",
        "img_size=128",
        "workers=0",
        "quiet=true",
        "name=e2e",
        "device=cpu",
    ]
    assert main(["train", *args]) == 0
    run = tmp_path / "runs/train/e2e"
    assert {"last.pt", "best.pt", "metrics.csv", "config.yaml", "data_report.txt"} <= {
        p.name for p in run.iterdir()
    }
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 6
    assert ckpt["class_names"] and ckpt["config"]["train"]["img_size"] == 128

    assert main(["eval", "--weights", str(run / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert "Average Precision" in out and "mAP50-95" in out
    metrics = json.loads((tmp_path / "runs/eval/e2e/metrics.json").read_text())
    assert 0 <= metrics["mAP50"] <= 1

    image = sorted((tiny_shapes / "images/val").iterdir())[0]
    assert main(["infer", str(image), "--conf", "0.001"]) == 0  # newest best.pt by default
    out_dir = tmp_path / "runs/infer/exp"
    assert (out_dir / image.name).is_file()
    records = json.loads((out_dir / "detections.json").read_text())
    assert records[0]["image"] == str(image)

    det = Detector.from_checkpoint(run / "best.pt", device="cpu", conf=0.001)
    dets = det.predict([str(image), str(image)])
    assert len(dets) == 2 and len(dets[0]) == len(dets[1])


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

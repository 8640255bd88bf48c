"""Each family through the real trainer and evaluator: ``tools/train.py model=...`` in-process on
a tiny generated dataset (one short epoch, small input), then ``eval`` on the checkpoint."""

from __future__ import annotations

import csv
import math

import pytest

from detkit.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize(
    ("model", "extra"),
    [("yolo_n", []), ("ssd300", ["model.width_mult=0.25"])],
)
def test_train_and_evaluate(model, extra, tiny_shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [
        f"model={model}",
        *extra,
        f"root={tiny_shapes}",
        "num_train=8",
        "num_val=4",
        "epochs=1",
        "batch=4",
        "img_size=96",
        "workers=0",
        "quiet=true",
        f"name={model}",
        "device=cpu",
    ]
    assert main(["train", *args]) == 0
    run = tmp_path / "runs/train" / model
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 1
    assert all(math.isfinite(float(rows[0][k])) for k in ("box", "obj", "cls"))
    assert 0 <= float(rows[0]["mAP50"]) <= 1
    assert main(["eval", "--weights", str(run / "last.pt")]) == 0
    assert "mAP50" in capsys.readouterr().out

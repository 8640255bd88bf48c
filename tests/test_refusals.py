"""What is refused is named as such and leaves nothing behind: a checkpoint whose outputs are
NaN although its weights are finite, and an export whose onnxruntime check fails."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_predict import make_checkpoint

import detkit.inference.export as onnx_export
from detkit.cli import main
from detkit.inference.predict import Detector
from detkit.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def test_finite_weights_with_nan_outputs_are_named(weights, tmp_path, capsys) -> None:
    ckpt = load_checkpoint(weights)
    for part in ("model", "ema"):  # a negative variance: every weight finite, every output NaN
        var = next(k for k in ckpt[part] if k.endswith("running_var"))
        ckpt[part][var] = -torch.ones_like(ckpt[part][var])
    broken = save_checkpoint(ckpt, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="weights are finite but the model's outputs are"):
        Detector.from_checkpoint(broken, device="cpu")
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 90, np.uint8))
    assert main(["infer", str(image), "--weights", str(broken), "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {broken}: its weights are finite but the model's outputs are NaN/inf" in err
    assert "no detections" not in err


def test_an_export_that_fails_its_check_leaves_no_file(
    weights, tmp_path, monkeypatch, capsys
) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(weights), "--output", str(out)]) == 0
    good = out.read_bytes()

    def refused(path, weights, *args, **kwargs):
        raise ValueError("onnxruntime differs from PyTorch by 1.0e+00 > 0.0001")

    monkeypatch.setattr(onnx_export, "compare_with_torch", refused)
    assert main(["export", "--weights", str(weights), "--output", str(out), "--nms"]) == 2
    err = capsys.readouterr().err
    assert "differs from PyTorch" in err and f"the export was removed ({out} not written)" in err
    assert out.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert main(["export", "--weights", str(weights), "--output", str(tmp_path / "n.onnx")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

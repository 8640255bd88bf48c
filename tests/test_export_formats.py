"""TorchScript and OpenVINO exports (#22 item 7): each answers as PyTorch does before NMS and
gives the same detections after, through ``Detector`` as an ONNX export does."""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest
import torch
from test_predict import make_checkpoint

from detkit.cli import main
from detkit.config.build import load_model
from detkit.core.versions import MissingPackage
from detkit.inference.export import compare_with_torch, export_checkpoint
from detkit.inference.predict import Detector, open_export

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGES = [  # BGR noise of two sizes: a lively untrained model finds things in both
    np.random.default_rng(k).integers(0, 255, shape, dtype=np.uint8)
    for k, shape in enumerate([(100, 200, 3), (128, 96, 3)])
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", lively=True)


def _batch() -> torch.Tensor:
    images = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    images[0] = 114 / 255  # the letterbox grey: a blank image
    return images


@pytest.mark.parametrize(
    ("fmt", "name", "runtime", "atol"),
    [("torchscript", "best.torchscript", "TorchScript", 1e-4),
     ("openvino", "best_openvino_model", "OpenVINO", 1e-4)],
)  # fmt: skip
def test_export_answers_as_pytorch(weights, fmt, name, runtime, atol):
    path = export_checkpoint(weights, format=fmt, dynamic=True)
    assert path == weights.with_name(name)
    assert f"{runtime} == PyTorch on 3 images" in compare_with_torch(path, weights)
    model, _, _ = load_model(weights, device="cpu")
    images = _batch()
    with torch.inference_mode():
        expected = model.decode(model(images), model.priors(128, 128))
    for e, g in zip(expected, open_export(path)(images), strict=True):
        assert e.shape == g.shape
        torch.testing.assert_close(g, e, atol=atol, rtol=0)
    # through Detector: the same detections as the checkpoint, in original px
    exported = Detector.from_checkpoint(path, conf=0.001)
    assert exported.img_size == 128 and exported.cat_ids == [1, 2, 3, 4]
    for a, b in zip(
        exported(IMAGES),
        Detector.from_checkpoint(weights, device="cpu", conf=0.001)(IMAGES),
        strict=True,
    ):
        assert torch.equal(a.labels, b.labels) and len(a) > 0
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)


def test_cli_exports_each_format_and_refuses_what_it_lacks(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "m.torchscript"
    assert (
        main(["export", "--weights", str(weights), "--format", "torchscript", "--output", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    assert f"-> {out}" in text and "TorchScript == PyTorch" in text
    cv2.imwrite(str(tmp_path / "in.png"), IMAGES[0])
    args = ["infer", str(tmp_path / "in.png"), "--weights", str(out), "--conf", "0.001"]
    assert main([*args, "--no-save", "--name", "t"]) == 0
    found = json.loads((tmp_path / "runs/infer/t/detections.json").read_text())
    assert found[0]["detections"]  # detkit infer runs the TorchScript file
    assert main(["export", "--weights", str(weights), "--format", "openvino", "--batch", "2",
                 "--output", str(tmp_path / "fixed_openvino_model")]) == 0  # fmt: skip
    assert "OpenVINO == PyTorch on 2 images" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "fixed_openvino_model").iterdir()) == [
        "detkit.json",
        "fixed.bin",
        "fixed.xml",
    ]
    assert main(["export", "--weights", str(weights), "--format", "torchscript", "--nms"]) == 2
    assert "--format torchscript has no nms" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is an export: give a number"):
        Detector.from_checkpoint(out, conf="best")  # a number is needed for an export


def test_a_missing_openvino_is_one_line(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    out = tmp_path / "x_openvino_model"
    with pytest.raises(MissingPackage, match=r"pip install 'detkit\[openvino\]'"):
        export_checkpoint(weights, out, format="openvino")
    assert (
        main(["export", "--weights", str(weights), "--format", "openvino", "--output", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'openvino' package" in err and not out.exists()

"""ONNX export: onnxruntime equals PyTorch before NMS (1e-4) and gives the same detections after."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_predict import NAMES, BrightSpots, make_checkpoint, spots_image

from detkit.cli import main
from detkit.config import CONFIG_DIR
from detkit.config.build import load_model
from detkit.inference.export import (
    DecodedModel,
    compare_with_torch,
    export_checkpoint,
    export_onnx,
)
from detkit.inference.onnx_runtime import OnnxModel
from detkit.inference.postprocess import postprocess
from detkit.inference.predict import Detector

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

BLANK = spots_image(200, 100, [])
BATCH = [  # 1, 2 and 3 objects, three sizes
    spots_image(200, 100, [([50, 25, 75, 50], 0, 0.9)]),
    spots_image(64, 128, [([0, 0, 16, 16], 1, 0.9), ([32, 64, 48, 80], 2, 0.7)]),
    spots_image(
        256,
        256,
        [([0, 0, 32, 32], 0, 0.9), ([64, 0, 96, 32], 1, 0.8), ([128, 128, 160, 160], 2, 0.7)],
    ),
]


def _same(a, b, atol=1e-4):
    assert [len(x) for x in a] == [len(y) for y in b]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.labels, y.labels)
        torch.testing.assert_close(x.boxes, y.boxes, atol=atol, rtol=0)
        torch.testing.assert_close(x.scores, y.scores, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def toy_exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    model = BrightSpots()
    decoded = export_onnx(model, folder / "toy.onnx", 128, NAMES, cat_ids=[10, 20, 30])
    nms = export_onnx(model, folder / "toy-nms.onnx", 128, NAMES, nms=True, conf=0.25, iou=0.5)
    return model, decoded, nms


def test_toy_model_before_nms(toy_exports):
    model, decoded, _ = toy_exports
    ort_model = OnnxModel(decoded)
    images = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    for x in (images[:1] * 0, images):  # a blank image, then a batch of 3
        with torch.inference_mode():
            expected = DecodedModel(model, 128)(x)
        for e, g in zip(expected, ort_model(x), strict=True):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=0)


def test_toy_model_detections_after_nms(toy_exports):
    model, decoded, nms = toy_exports
    torch_det = Detector(model, NAMES, img_size=128, conf=0.25, iou=0.5)
    onnx_det = Detector.from_checkpoint(decoded, conf=0.25, iou=0.5)  # the suffix picks ONNX
    nms_det = Detector.from_onnx(nms)
    assert onnx_det.cat_ids == [10, 20, 30] and nms_det.conf == 0.25
    assert len(torch_det.predict(BLANK)) == 0
    for det in (onnx_det, nms_det):
        assert len(det.predict(BLANK)) == 0
        expected, got = torch_det.predict(BATCH), det.predict(BATCH)
        assert [len(d) for d in got] == [1, 2, 3]
        _same(got, expected)
    # a class filter and a higher threshold on top of the graph's NMS
    assert nms_det.predict(BATCH[2], classes=[2]).names == ["blue"]
    assert nms_det.predict(BATCH[2], conf=0.999999).names == ["red"]


def test_threads_set_an_onnx_sessions_pool_and_are_refused_elsewhere(toy_exports, weights):
    _, decoded, _ = toy_exports
    for threads in (1, 2):
        det = Detector.from_checkpoint(decoded, threads=threads)
        assert det.model.session.get_session_options().intra_op_num_threads == threads
    default = Detector.from_export(decoded).model.session.get_session_options()
    assert default.intra_op_num_threads == 0  # onnxruntime's own choice
    with pytest.raises(ValueError, match=r"threads=1 sets an .onnx export's .*torch.set_num"):
        Detector.from_checkpoint(weights, device="cpu", threads=1)


def test_nms_graph_refuses_settings_it_cannot_honour(toy_exports):
    _, _, nms = toy_exports
    meta = OnnxModel(nms).meta
    assert (meta["format"], meta["conf"], meta["iou"], meta["max_det"]) == ("nms", 0.25, 0.5, 300)
    with pytest.raises(ValueError, match="NMS in the graph"):
        Detector.from_onnx(nms, conf=0.1)
    with pytest.raises(ValueError, match="NMS in the graph"):
        Detector.from_onnx(nms).predict(BLANK, conf=0.01)
    with pytest.raises(ValueError, match="exported for img_size 128"):
        Detector.from_onnx(nms, img_size=256)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", lively=True)


def _real_batch() -> torch.Tensor:
    images = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    images[0] = 114 / 255  # the letterbox grey: a blank image
    return images


def test_real_model_equal_before_nms_and_after(weights, tmp_path):
    path = export_checkpoint(weights, tmp_path / "m.onnx", dynamic=True)
    model, _, _ = load_model(weights, device="cpu")
    images = _real_batch()
    with torch.inference_mode():
        expected = model.decode(model(images), model.priors(128, 128))
    got = OnnxModel(path)(images)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        torch.testing.assert_close(g, e, atol=1e-4, rtol=0)
    # after NMS: the shared post-processing on both, and NMS inside the graph
    nms_path = export_checkpoint(
        weights, tmp_path / "m-nms.onnx", dynamic=True, nms=True, conf=0.05
    )
    want = postprocess(*expected, conf=0.05, iou=0.6, max_det=300)
    counts = [len(s) for _, s, _ in want]
    assert counts[0] == 0 and len(set(counts)) == 3  # blank: none; then different counts
    for result in (
        postprocess(*got, conf=0.05, iou=0.6, max_det=300),
        OnnxModel(nms_path).detections(images),
    ):
        assert [len(s) for _, s, _ in result] == counts
        for (eb, es, el), (gb, gs, gl) in zip(want, result, strict=True):
            assert torch.equal(el, gl)
            torch.testing.assert_close(gb, eb, atol=1e-3, rtol=0)
            torch.testing.assert_close(gs, es, atol=1e-5, rtol=0)


def test_cli_export_and_detector_on_the_onnx(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "exported.onnx"
    assert main(["export", "--weights", str(weights), "--dynamic", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime == PyTorch" in text and str(out) in text
    assert main(["export", "--weights", str(weights), "--nms", "--conf", "0.05"]) == 0  # batch 1
    assert "NMS graph == PyTorch" in capsys.readouterr().out
    fixed = weights.with_name("best-nms.onnx")
    meta = OnnxModel(fixed).meta
    assert meta["batch"] == 1 and not meta["dynamic"] and meta["class_names"][0] == "circle"
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        for h, w in [(90, 160), (128, 128), (200, 100)]
    ]
    torch_det = Detector.from_checkpoint(weights, device="cpu", conf=0.05)
    expected = torch_det.predict(images)
    assert len({len(d) for d in expected}) > 1
    _same(Detector.from_checkpoint(out, conf=0.05).predict(images), expected, atol=1e-3)
    _same(Detector.from_checkpoint(fixed).predict(images), expected, atol=1e-3)  # one at a time
    # infer runs an .onnx too
    assert main(["infer", str(tmp_path), "--weights", str(fixed), "--no-save"]) == 2  # no images
    capsys.readouterr()


def test_missing_onnx_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'detkit\[export\]'"):
        export_onnx(BrightSpots(), tmp_path / "x.onnx", 64, NAMES)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.yaml")))
def test_every_model_config_exports(config, tmp_path):
    weights = make_checkpoint(tmp_path / "best.pt", overrides=[f"model={config}"])
    path = export_checkpoint(weights, tmp_path / "m.onnx", dynamic=True)
    assert "onnxruntime == PyTorch" in compare_with_torch(path, weights)
    # An untrained model's c·p is one value to 1e-9 on every box (prior x 1/C), so no baked
    # threshold gives both sides detections that do not hinge on float rounding: this checks
    # that each architecture's NMS graph exports and runs. NMS parity with detections is
    # checked where scores spread: the BrightSpots model here (1, 2, 3 detections in
    # test_toy_model_detections_after_nms) and the trained model of test_end_to_end.
    path = export_checkpoint(weights, tmp_path / "m-nms.onnx", dynamic=True, nms=True, conf=0.5)
    assert "NMS graph == PyTorch" in compare_with_torch(path, weights)
    assert json.loads(json.dumps(OnnxModel(path).meta))["img_size"] == 128


def test_cli_without_onnx_says_how_to_install(weights, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["export", "--weights", str(weights), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'detkit[export]'" in capsys.readouterr().err
    (tmp_path / "m.onnx").write_bytes(b"")
    assert main(["infer", str(tmp_path), "--weights", str(tmp_path / "m.onnx")]) == 2
    assert "onnxruntime" in capsys.readouterr().err


def test_pre_nms_cap_is_the_same_in_python_and_in_the_graph(weights, tmp_path, monkeypatch):
    """Few enough candidates pass the cap that it decides the result; both paths agree."""
    import detkit.inference.export as export_module
    import detkit.inference.postprocess as post

    model, _, _ = load_model(weights, device="cpu")
    images = _real_batch()[1:]
    with torch.inference_mode():
        decoded = model.decode(model(images), model.priors(128, 128))
    cap = 20
    uncapped = postprocess(*decoded, conf=0.001, iou=0.6, max_det=300)
    monkeypatch.setattr(post, "PRE_NMS_TOPK", cap)
    monkeypatch.setattr(export_module, "PRE_NMS_TOPK", cap)
    want = postprocess(*decoded, conf=0.001, iou=0.6, max_det=300)
    assert all(len(s) <= cap for _, s, _ in want)
    assert any(len(a[1]) > len(b[1]) for a, b in zip(uncapped, want, strict=True))
    path = export_checkpoint(weights, tmp_path / "cap.onnx", nms=True, conf=0.001)
    for (eb, es, el), (gb, gs, gl) in zip(want, OnnxModel(path).detections(images), strict=True):
        assert torch.equal(el, gl)
        torch.testing.assert_close(gb, eb, atol=1e-3, rtol=0)
        torch.testing.assert_close(gs, es, atol=1e-5, rtol=0)


def test_agnostic_nms_graph_equals_agnostic_detector_and_output_into_a_folder(tmp_path):
    model = BrightSpots()
    # a cell bright in two channels: class-aware NMS keeps two labels for one box
    two = spots_image(128, 128, [([0, 0, 16, 16], 0, 0.9), ([0, 0, 16, 16], 1, 0.8)])
    path = export_onnx(model, tmp_path / "a.onnx", 128, NAMES, nms=True, conf=0.1, agnostic=True)
    assert OnnxModel(path).meta["agnostic"] is True
    onnx_det = Detector.from_onnx(path)
    torch_det = Detector(model, NAMES, img_size=128, conf=0.1, iou=0.6, agnostic=True)
    assert onnx_det.agnostic and onnx_det.predict(two).names == ["red"]
    _same([onnx_det.predict(two)], [torch_det.predict(two)])
    _same(onnx_det.predict(BATCH), torch_det.predict(BATCH))
    with pytest.raises(ValueError, match="agnostic False"):
        Detector.from_onnx(path, agnostic=False)
    with pytest.raises(ValueError, match="nms=True"):
        export_onnx(model, tmp_path / "b.onnx", 128, NAMES, agnostic=True)


def test_export_into_an_existing_folder_is_readable_by_others(weights, tmp_path, capsys):
    folder = tmp_path / "serve"
    folder.mkdir()
    old = os.umask(0o022)
    try:
        assert main(["export", f"weights={weights}", f"output={folder}", "no_check=true"]) == 0
    finally:
        os.umask(old)
    written = folder / "best.onnx"
    assert written.is_file() and stat.S_IMODE(written.stat().st_mode) == 0o644
    out = capsys.readouterr().out
    assert f"weights: {weights}" in out and str(written) in out
    assert main(["eval", f"--weights={written}"]) == 2
    assert "this is an ONNX export: run it with `detkit infer" in capsys.readouterr().err


def test_the_readme_onnxruntime_snippet_gives_detkits_detections(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parent.parent / "docs/inference_export.md").read_text()
    block = readme.split("<!-- onnx-snippet (run by tests/test_export.py) -->\n```python\n")[1]
    snippet = block.split("```")[0]
    model = BrightSpots()
    export_onnx(model, tmp_path / "best-nms.onnx", 128, NAMES, nms=True, conf=0.25, iou=0.5)
    # 600 x 300: shrunk with area interpolation, so a bilinear resize would change the pixels
    image = spots_image(600, 300, [([150, 75, 225, 150], 0, 0.9), ([375, 150, 450, 225], 2, 0.8)])
    cv2.imwrite(str(tmp_path / "image.jpg"), image)
    monkeypatch.chdir(tmp_path)
    env: dict = {}
    exec(snippet, env)
    expected = Detector(model, NAMES, img_size=128, conf=0.25, iou=0.5).predict(
        cv2.imread("image.jpg")
    )
    assert len(expected) == 2
    np.testing.assert_allclose(env["boxes"], expected.boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(env["scores"], expected.scores.numpy(), atol=1e-5)
    np.testing.assert_array_equal(env["labels"], expected.labels.numpy())


def test_an_onnx_runs_on_the_gpu_when_onnxruntime_has_cuda(toy_exports, monkeypatch, caplog):
    """``Detector.from_checkpoint(x.onnx)`` with no device picks ONNX Runtime's CUDA provider
    when it is there and a GPU is present (it always ran on the CPU); if onnxruntime cannot
    start it, that is said (here it cannot: no GPU, the session falls back to the CPU)."""
    import logging

    import onnxruntime

    _, decoded, _ = toy_exports
    asked = []
    session = onnxruntime.InferenceSession

    def recording(path, options=None, providers=None, **kwargs):
        asked.append(list(providers))
        return session(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    Detector.from_checkpoint(decoded)  # no GPU: the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="detkit.inference.onnx_runtime"):
        det = Detector.from_checkpoint(decoded)
    assert asked == [["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]]
    assert "could not start its CUDAExecutionProvider" in caplog.text
    assert len(det.predict(BLANK)) == 0  # it runs

"""``explain``: each kept box's cell lies under its centre, NMS trace IoUs exceed the threshold,
the traced detections are the detector's own, and the PNG and JSON are written."""

from __future__ import annotations

import json

import pytest
import torch
from matplotlib.image import imread
from test_predict import make_checkpoint

from detkit.boxes import box_iou
from detkit.cli import main
from detkit.inference.postprocess import postprocess
from detkit.inference.predict import Detector


@pytest.fixture(scope="module")
def lively(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("w") / "best.pt", lively=True)


def _val_image(root):
    return sorted((root / "images/val").iterdir())[0]


def test_explain_traces_the_detectors_own_boxes(lively, tiny_shapes, tmp_path):
    det = Detector.from_checkpoint(lively, device="cpu", conf=0.3, iou=0.3)
    image = _val_image(tiny_shapes)
    e = det.explain(image)
    found = det.predict(image)
    assert len(e.kept) == len(found) > 0 and e.suppressed
    got = torch.tensor([k["box_orig"] for k in e.kept])
    assert torch.allclose(got, found.boxes, atol=0.02)
    assert [k["score"] for k in e.kept] == pytest.approx(found.scores.tolist(), abs=1e-5)
    for k in e.kept:  # yolo_tiny: the centre lies in the cell that predicted it
        (x1, y1, x2, y2), (gx, gy), s = k["box"], k["cell"], k["stride"]
        assert gx * s <= (x1 + x2) / 2 <= (gx + 1) * s and gy * s <= (y1 + y2) / 2 <= (gy + 1) * s
        assert k["score"] == pytest.approx(k["c"] * k["p"], rel=1e-4)
    for sup in e.suppressed:
        by = e.kept[sup["by"]]
        assert sup["iou"] > det.iou and sup["label"] == by["label"] and sup["score"] <= by["score"]
        iou = box_iou(torch.tensor([sup["box"]]), torch.tensor([by["box"]]))[0, 0]
        assert float(iou) == pytest.approx(sup["iou"], abs=1e-3)
    assert [lv["grid"] for lv in e.levels] == [(16, 16), (8, 8), (4, 4)]  # 128 px, strides 8-32
    png, js = e.save(tmp_path, "x")
    doc = json.loads(js.read_text())
    assert len(doc["kept"]) == len(e.kept) and doc["suppressed"] == e.suppressed
    pixels = imread(png)
    assert min(pixels.shape[:2]) > 800 and pixels.std() > 0.05


def nms_trace(boxes, scores, conf, iou, max_det):
    """``postprocess(trace=True)`` of one image with c·p = ``scores`` [N, C], as tuples:
    kept ``(prior, label, score)``, suppressed ``(prior, label, score, by, iou)``."""
    ones = torch.ones(1, len(boxes))
    ((found, t),) = postprocess(boxes[None], ones, scores[None], conf, iou, max_det, trace=True)
    kept = list(zip(t.kept.tolist(), found.labels.tolist(), found.scores.tolist(), strict=True))
    return kept, list(zip(*(x.tolist() for x in t[1:]), strict=True))


def test_nms_trace_by_hand():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.0, 0.6]])
    kept, suppressed = nms_trace(boxes, scores, conf=0.1, iou=0.5, max_det=10)
    assert [(n, k) for n, k, _ in kept] == [(0, 0), (2, 0), (3, 1)]  # class 1 is not suppressed
    (n, k, s, by, iou) = suppressed[0]
    assert (n, k, by, s) == (1, 0, 0, pytest.approx(0.8)) and iou == pytest.approx(90 / 110)
    assert nms_trace(boxes, scores, conf=0.1, iou=0.5, max_det=1)[0] == kept[:1]


def test_explain_cli(lively, tiny_shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = _val_image(tiny_shapes)
    assert main(["explain", str(image), "--weights", str(lively), "--conf", "0.3"]) == 0
    out = tmp_path / "runs/explain/exp"
    assert (out / f"{image.stem}.png").is_file() and (out / f"{image.stem}.json").is_file()
    assert "cell (" in capsys.readouterr().out

"""The Python API: Detector.predict on every input kind, batches, class filtering, Detections.

Most tests use ``BrightSpots``, a toy model with the detkit model interface whose output is known
in advance: it reports each bright 16 px cell of the network input as one object, so boxes in
original pixels can be checked exactly through the letterbox and back.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import detkit
from detkit.boxes.coder import GridCoder, make_grid_priors
from detkit.config import load_config
from detkit.config.build import build_model, deploy_record
from detkit.data import SHAPES_CLASSES
from detkit.inference.predict import Detections, Detector
from detkit.models.checkpoint import CheckpointError, save_checkpoint

NAMES = ["red", "green", "blue"]


class BrightSpots(nn.Module):
    """Toy detector: one prior per 16 px cell, box = the cell, objectness from the brightest
    channel's cell mean (``> 0.5`` is an object), class = the brightest channel (RGB order).

    Input ``[B, 3, H, W]`` float RGB in [0, 1]; raw ``[B, H/16 * W/16, 4 + 1 + 3]`` like the
    grid models, decoded with the same :class:`GridCoder`.
    """

    strides = (16,)

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(40.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = F.avg_pool2d(images, 16)
        obj = (mean.amax(1, keepdim=True) - 0.5) * self.gain
        raw = torch.cat(
            [torch.zeros_like(mean[:, :2]), torch.zeros_like(mean[:, :2]), obj, mean * 20], 1
        )
        b, k, h, w = raw.shape
        return raw.permute(0, 2, 3, 1).reshape(b, h * w, k)

    def priors(self, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        return make_grid_priors(
            [(height // 16, width // 16)], [16], [[(16.0, 16.0)]], device=device
        )

    def decode(self, raw: torch.Tensor, priors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        deltas = torch.cat([raw[..., :2].sigmoid(), raw[..., 2:4]], dim=-1)
        return GridCoder().decode(deltas, priors), raw[..., 4].sigmoid(), raw[..., 5:].softmax(-1)


def spots_image(width: int, height: int, spots: list[tuple[list[float], int, float]]) -> np.ndarray:
    """A black BGR image with filled squares ``(xyxy orig px, channel (RGB index), value)``."""
    image = np.zeros((height, width, 3), np.uint8)
    for (x1, y1, x2, y2), channel, value in spots:
        image[round(y1) : round(y2), round(x1) : round(x2), 2 - channel] = round(value * 255)
    return image


def make_checkpoint(path: Path, overrides: list[str] | None = None, lively: bool = False) -> Path:
    """An untrained model saved as a detkit checkpoint (the keys ``Trainer`` writes).

    Untrained, every score sits near the objectness prior times 1/C. ``lively`` (grid models)
    sets the batch norm statistics from one random batch and scales the head's objectness and
    class weights by 30, so that scores spread from 0 to 1 like a trained model's and differ
    from image to image (box outputs are left alone: scaled, ``exp`` would make boxes huge).
    """
    cfg = load_config(overrides=["img_size=128", "device=cpu", "workers=0", *(overrides or [])])
    torch.manual_seed(0)
    model = build_model(cfg.model, len(SHAPES_CLASSES))
    if lively:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # running stats = this batch's
        model.train()
        with torch.no_grad():
            model(torch.rand(8, 3, 128, 128, generator=torch.Generator().manual_seed(5)))
            k = 5 + len(SHAPES_CLASSES)
            for name, p in model.named_parameters():
                if "head" in name and name.endswith("weight"):
                    rows = torch.arange(p.shape[0]) % k >= 4  # objectness and class logits
                    p[rows] *= 30.0
    state = model.eval().state_dict()
    ckpt = {
        "model": state,
        "ema": state,
        "config": cfg.to_dict(),
        "class_names": list(SHAPES_CLASSES),
        "cat_ids": [1, 2, 3, 4],
        "deploy": deploy_record(cfg, list(SHAPES_CLASSES), [1, 2, 3, 4]).to_dict(),
        "epoch": 0,
        "step": 0,
        "best_map": -1.0,
        "history": [],
        "version": detkit.__version__,
    }
    return save_checkpoint(ckpt, path)


@pytest.fixture
def det() -> Detector:
    return Detector(BrightSpots(), NAMES, img_size=128, conf=0.25, iou=0.5, cat_ids=[10, 20, 30])


def test_boxes_come_back_in_original_pixels(det):
    # 200 x 100 -> scale 0.64 -> 128 x 64 input; input cell [32, 16, 48, 32] is orig [50, 25, 75, 50].
    image = spots_image(200, 100, [([50, 25, 75, 50], 0, 0.9)])
    d = det.predict(image)
    assert len(d) == 1 and d.names == ["red"] and d.orig_shape == (100, 200)
    torch.testing.assert_close(d.boxes, torch.tensor([[50.0, 25.0, 75.0, 50.0]]))
    assert float(d.scores[0]) > 0.99


def test_every_input_kind_gives_the_same_detections(det, tmp_path):
    bgr = spots_image(200, 100, [([50, 25, 75, 50], 0, 0.9), ([125, 50, 150, 75], 2, 0.8)])
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), bgr)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    outs = [
        det.predict(bgr),
        det.predict(str(path)),
        det.predict(path),
        det.predict(rgb, rgb=True),
        det.predict(Image.fromarray(rgb)),
        det.predict(np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])),  # BGRA
    ]
    assert outs[0].names == ["red", "blue"]
    for d in outs[1:]:
        torch.testing.assert_close(d.boxes, outs[0].boxes)
        assert torch.equal(d.labels, outs[0].labels)
    assert det.predict(rgb).names == ["blue", "red"]  # RGB read as BGR swaps the channels
    with pytest.raises(TypeError, match="uint8"):
        det.predict(bgr.astype(np.float32))


def test_batch_of_different_sizes_equals_one_by_one(det):
    images = [
        spots_image(200, 100, [([50, 25, 75, 50], 0, 0.9)]),
        spots_image(64, 128, [([0, 0, 16, 16], 1, 0.9), ([32, 64, 48, 80], 2, 0.7)]),
        spots_image(
            256,
            256,
            [([0, 0, 32, 32], 0, 0.9), ([64, 0, 96, 32], 1, 0.8), ([128, 128, 160, 160], 2, 0.7)],
        ),
    ]
    batch = det.predict(images)
    assert isinstance(batch, list) and [len(d) for d in batch] == [1, 2, 3]
    for image, d in zip(images, batch, strict=True):
        single = det.predict(image)
        torch.testing.assert_close(d.boxes, single.boxes)
        torch.testing.assert_close(d.scores, single.scores)
        assert d.orig_shape == image.shape[:2]
    torch.testing.assert_close(batch[1].boxes, torch.tensor([[0.0, 0, 16, 16], [32, 64, 48, 80]]))
    assert det.predict([]) == []


def test_class_filter_and_per_call_threshold(det):
    image = spots_image(256, 128, [([0, 0, 32, 32], 0, 0.9), ([64, 0, 96, 32], 1, 0.6)])
    assert sorted(det.predict(image).names) == ["green", "red"]
    assert det.predict(image, classes=[1]).names == ["green"]
    assert det.predict(image, classes=[0, 2]).names == ["red"]
    assert det.predict(image, conf=0.99).names == ["red"]  # green's c = sigmoid(4) ~ 0.98
    with pytest.raises(ValueError, match="out of range"):
        det.predict(image, classes=[3])


def test_detections_outputs(det):
    image = spots_image(200, 100, [([50, 25, 75, 50], 0, 0.9), ([125, 50, 150, 75], 2, 0.8)])
    d = det.predict(image)
    arrays = d.to_numpy()
    assert arrays["boxes"].dtype == np.float32 and arrays["labels"].dtype == np.int64
    coco = d.to_coco(image_id=7, cat_ids=det.cat_ids)
    assert [c["category_id"] for c in coco] == [10, 30]
    assert coco[0]["bbox"] == [50.0, 25.0, 25.0, 25.0] and coco[0]["image_id"] == 7
    first = d.to_yolo()[0].split()
    assert first[0] == "0" and [float(v) for v in first[1:5]] == [0.3125, 0.375, 0.125, 0.25]
    assert d.to_yolo(with_scores=False)[1].count(" ") == 4
    crops = d.crops(image)
    assert [c.shape for c in crops] == [(25, 25, 3), (25, 25, 3)]
    assert crops[0][..., 2].min() == round(0.9 * 255)  # the red square itself
    before = image.copy()
    drawn = d.draw(image)
    assert drawn.shape == image.shape and (drawn != image).any()
    np.testing.assert_array_equal(image, before)
    text = repr(d)
    assert "Detections(2 objects, 200x100 px)" in text and "red" in text and "50.0" in text
    with pytest.raises(ValueError, match="orig_shape"):
        Detections(d.boxes, d.scores, d.labels, NAMES).to_yolo()


def test_nothing_found_is_an_empty_result(det):
    d = det.predict(np.zeros((50, 80, 3), np.uint8))
    assert len(d) == 0 and d.boxes.shape == (0, 4) and d.to_coco(1) == [] and d.to_yolo() == []
    assert "0 objects" in repr(d)


def test_from_checkpoint_on_a_real_model(tmp_path):
    ckpt = make_checkpoint(tmp_path / "best.pt")
    det = Detector.from_checkpoint(ckpt, device="cpu", conf=0.001, max_det=50)
    assert det.img_size == 128 and det.class_names == list(SHAPES_CLASSES)
    assert det.cat_ids == [1, 2, 3, 4] and "4 classes" in repr(det)
    image = np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    d = det.predict(image)
    assert 0 < len(d) <= 50
    assert (
        (d.boxes >= 0).all()
        and (d.boxes[:, [0, 2]] <= 160).all()
        and (d.boxes[:, [1, 3]] <= 90).all()
    )
    assert (d.scores[:-1] >= d.scores[1:]).all()
    bigger = Detector.from_checkpoint(ckpt, device="cpu", img_size=160, conf=0.001)
    assert bigger.img_size == 160 and len(bigger.predict(image)) > 0


def test_labels_of_one_box_do_not_hide_each_other():
    from detkit.core.visualize import class_color, draw_detections

    boxes = np.array([[20.0, 50.0, 150.0, 150.0]] * 2)
    out = draw_detections(
        np.zeros((200, 200, 3), np.uint8), boxes, np.array([0.9, 0.8]), np.array([0, 1]), NAMES
    )
    inside = out[53:70, 23:50].reshape(-1, 3)  # just under the box's top edge
    assert (inside == class_color(1)).all(axis=1).any()  # the second label, stacked below
    above = out[35:48, 23:50].reshape(-1, 3)
    assert (above == class_color(0)).all(axis=1).any()  # the first one, above the box


def test_to_coco_writes_the_datasets_category_ids_by_default(det):
    # README: dets.to_coco(image_id=1) must score against the dataset's ids, not labels 0..C-1
    image = spots_image(200, 100, [([50, 25, 75, 50], 0, 0.9), ([125, 50, 150, 75], 2, 0.8)])
    d = det.predict(image)
    assert [c["category_id"] for c in d.to_coco(image_id=1)] == [10, 30]
    assert d.category_ids.tolist() == [10, 30] and d.labels.tolist() == [0, 2]
    assert [c["category_id"] for c in d.to_coco(1, cat_ids=[5, 6, 7])] == [5, 7]
    unmapped = Detections(d.boxes, d.scores, d.labels, NAMES)
    assert [c["category_id"] for c in unmapped.to_coco(1)] == [0, 2]
    records = json.loads(d.to_json())
    assert [(r["class"], r["class_id"], r["category_id"]) for r in records] == [
        ("red", 0, 10),
        ("blue", 2, 30),
    ]
    assert records[0]["box"] == [50.0, 25.0, 75.0, 50.0]


def test_detections_index_slice_and_iterate(det):
    image = spots_image(
        256,
        128,
        [([0, 0, 32, 32], 0, 0.9), ([64, 0, 96, 32], 1, 0.8), ([128, 64, 160, 96], 2, 0.7)],
    )
    d = det.predict(image)
    assert len(d) == 3 and d.names == ["red", "green", "blue"]
    assert isinstance(d[0], Detections) and d[0].names == ["red"] and d[-1].names == ["blue"]
    assert d[1:].names == ["green", "blue"] and d[1:].category_ids.tolist() == [20, 30]
    assert d[d.labels != 1].names == ["red", "blue"]
    assert d[[2, 0]].names == ["blue", "red"]
    assert [x.names[0] for x in d] == ["red", "green", "blue"]
    assert all(len(x) == 1 and x.orig_shape == (128, 256) for x in d)
    with pytest.raises(IndexError, match="out of range"):
        d[3]


def test_plot_and_save_use_the_kept_image(det, tmp_path):
    image = spots_image(200, 100, [([50, 25, 75, 50], 0, 0.9)])
    d = det.predict(image)
    plotted = d.plot()
    rgb = image[..., ::-1]
    np.testing.assert_array_equal(plotted, d.draw(np.ascontiguousarray(rgb)))
    assert plotted.shape == (100, 200, 3) and (plotted != rgb).any()
    path = d.save(tmp_path / "out" / "x.png")
    np.testing.assert_array_equal(cv2.imread(str(path))[..., ::-1], plotted)
    np.testing.assert_array_equal(d.crops()[0], rgb[25:50, 50:75])
    bare = Detections(d.boxes, d.scores, d.labels, NAMES)
    with pytest.raises(ValueError, match="pass the image"):
        bare.plot()


def test_draw_takes_a_pil_image(det):
    image = spots_image(200, 100, [([50, 25, 75, 50], 0, 0.9)])
    pil = Image.fromarray(np.ascontiguousarray(image[..., ::-1]))
    d = det.predict(pil)
    drawn = d.draw(pil)
    np.testing.assert_array_equal(drawn, d.plot())


def test_classes_by_name_and_agnostic_nms():
    det = Detector(BrightSpots(), NAMES, img_size=128, conf=0.1, iou=0.5)
    image = spots_image(256, 128, [([0, 0, 32, 32], 0, 0.9), ([64, 0, 96, 32], 1, 0.6)])
    assert det.predict(image, classes=["green"]).names == ["green"]
    assert det.predict(image, classes=["red", "2"]).names == ["red"]
    with pytest.raises(ValueError, match="'purple' is neither"):
        det.predict(image, classes=["purple"])
    # a cell brighter in two channels gets both labels unless NMS is class-agnostic
    two = spots_image(128, 128, [([0, 0, 16, 16], 0, 0.9), ([0, 0, 16, 16], 1, 0.8)])
    assert sorted(det.predict(two).names) == ["green", "red"]
    det.agnostic = True
    assert det.predict(two).names == ["red"]


def test_predict_and_export_read_the_deploy_record_not_the_training_config(tmp_path):
    """A checkpoint's ``deploy`` record alone rebuilds the detector: the training config is
    not read (here it names another size and an unknown architecture)."""
    from detkit.config.build import load_model
    from detkit.models.checkpoint import load_checkpoint, save_checkpoint

    path = make_checkpoint(tmp_path / "best.pt")
    ckpt = load_checkpoint(path)
    ckpt["config"]["train"]["img_size"] = 999
    ckpt["config"]["model"]["arch"] = "no-such-arch"
    ckpt["deploy"] |= {"iou": 0.45, "max_det": 7}
    save_checkpoint(ckpt, path)
    det = Detector.from_checkpoint(path, device="cpu")
    assert (det.img_size, det.iou, det.max_det, det.conf) == (128, 0.45, 7, 0.25)
    assert det.cat_ids == [1, 2, 3, 4] and det.class_names == list(SHAPES_CLASSES)
    _, _, deploy = load_model(path)
    assert deploy.letterbox == "top-left, pad 114" and deploy.model["arch"] != "no-such-arch"
    ckpt["deploy"]["model"]["widths"] = "wide"  # a record that does not fit: named, no traceback
    save_checkpoint(ckpt, path)
    with pytest.raises(CheckpointError, match="widths"):
        Detector.from_checkpoint(path, device="cpu")


def test_ultralytics_names_a_callable_detector_and_speed(det):
    """#22 item 6: ``det(image)``, ``.xyxy / .conf / .cls``, ``.speed`` in ms per image."""
    image = spots_image(200, 100, [([50, 25, 75, 50], 0, 0.9), ([125, 50, 150, 75], 2, 0.8)])
    d = det(image, conf=0.3)
    same = det.predict(image, conf=0.3)
    assert d.xyxy is d.boxes and d.conf is d.scores and d.cls is d.labels
    assert torch.equal(d.xyxy, same.boxes) and d.cls.tolist() == [0, 2]
    assert set(d.speed) == {"preprocess", "inference", "postprocess"}
    images = [image, image[:, :100], image[:50]]
    start = time.perf_counter()
    batch = det(images)
    wall_ms = 1000 * (time.perf_counter() - start)
    assert [len(x) for x in batch] == [len(det(x)) for x in images]
    assert all(x.speed == batch[0].speed for x in batch)  # the batch's time per image
    assert all(v > 0 for v in batch[0].speed.values())
    assert 0 < 3 * sum(batch[0].speed.values()) <= wall_ms  # the parts of the call's time
    assert d[1:].speed == d.speed and Detections(d.boxes, d.scores, d.labels).speed == {}


def test_to_df_holds_the_unrounded_detections(det, monkeypatch):
    import sys

    image = spots_image(200, 100, [([50.3, 25, 75, 50], 0, 0.9), ([125, 50, 150, 75], 2, 0.8)])
    d = det.predict(image)
    df = d.to_df()
    assert list(df.columns) == ["class", "class_id", "category_id", "score", "x1", "y1", "x2", "y2"]
    assert df["class"].tolist() == ["red", "blue"] and df["category_id"].tolist() == [10, 30]
    np.testing.assert_array_equal(df[["x1", "y1", "x2", "y2"]].to_numpy(), d.boxes.numpy())
    np.testing.assert_array_equal(df["score"].to_numpy(), d.scores.numpy())
    assert len(d[d.scores > 2].to_df()) == 0
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        d.to_df()


def test_predict_errors_name_the_file(det, tmp_path):
    """Issue 22: ``det.predict("photo.jpg")`` used to say "file not found" without the file."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 a torn jpeg")
    good = tmp_path / "ok.png"
    cv2.imwrite(str(good), spots_image(64, 64, []))
    cases = [
        (tmp_path / "missing.jpg", f"{tmp_path / 'missing.jpg'}: file not found"),
        (bad, f"{bad}: not an image"),
        ([good, tmp_path / "gone.png"], f"{tmp_path / 'gone.png'}: file not found"),
        (tmp_path, f"{tmp_path} is a folder: predict_source(folder) reads the images in it"),
    ]
    for source, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            det.predict(source)


def test_supervision_round_trip_and_its_annotator(det, monkeypatch):
    """#22 item 7: ``to_supervision()`` / ``from_supervision()`` with the real package."""
    import sys

    import supervision as sv

    from detkit.core.versions import MissingPackage

    image = spots_image(200, 100, [([50, 25, 75, 50], 0, 0.9), ([125, 50, 150, 75], 2, 0.8)])
    d = det.predict(image)
    s = d.to_supervision()
    assert isinstance(s, sv.Detections) and len(s) == 2
    np.testing.assert_array_equal(s.xyxy, d.boxes.numpy())
    np.testing.assert_array_equal(s.confidence, d.scores.numpy())
    assert s.class_id.tolist() == [0, 2] and s.data["class_name"].tolist() == ["red", "blue"]
    assert s.data["category_id"].tolist() == [10, 30]
    drawn = sv.BoxAnnotator().annotate(image.copy(), s)  # supervision's own drawing
    assert (drawn[25:50, 50] != image[25:50, 50]).any()
    back = Detections.from_supervision(s, NAMES, d.orig_shape, det.cat_ids)
    assert torch.equal(back.boxes, d.boxes) and torch.equal(back.scores, d.scores)
    assert back.labels.tolist() == [0, 2] and back.category_ids.tolist() == [10, 30]
    flipped = Detections.from_supervision(s[::-1])  # names from data; sorted by score again
    assert flipped.class_names == ["red", "1", "blue"] and flipped.names == ["red", "blue"]
    assert torch.equal(flipped.boxes, d.boxes)
    with pytest.raises(ValueError, match="has no name"):
        Detections.from_supervision(s, ["red"])
    monkeypatch.setitem(sys.modules, "supervision", None)
    with pytest.raises(MissingPackage, match="pip install supervision"):
        d.to_supervision()


def test_letterbox_maps_of_a_batch_equal_the_per_image_maps():
    """(#20) ``detect_batch`` maps a whole batch back to orig px in one operation."""
    from detkit.data import LetterboxInfo
    from detkit.data.types import to_orig_batch

    g = torch.Generator().manual_seed(3)
    infos = [LetterboxInfo(0.3 + 0.07 * i, 0.29 + 0.05 * i, 0.0, 0.0, 300 + 9 * i, 500 - 7 * i)
             for i in range(6)]  # fmt: skip
    boxes = [torch.rand(k, 4, generator=g) * 400 for k in (3, 0, 7, 1, 0, 5)]
    for dtype in (torch.float32, torch.float64):
        got = to_orig_batch(infos, [b.to(dtype) for b in boxes])
        want = [i.to_orig(b.to(dtype)) for i, b in zip(infos, boxes, strict=True)]
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert to_orig_batch([], []) == []


def test_amp_runs_the_forward_in_half_precision_and_the_rest_in_float32(tmp_path):
    """(#20) validation autocasts where training does: the model's convs run in the autocast
    dtype (bfloat16 works on a CPU, so the path is tested here), decode and NMS in float32."""
    ckpt = make_checkpoint(tmp_path / "best.pt", ["model=yolo_n"], lively=True)
    plain = Detector.from_checkpoint(ckpt, device="cpu", conf=0.05)
    half = Detector.from_checkpoint(ckpt, device="cpu", conf=0.05)
    half.amp = torch.bfloat16
    seen = []
    half.model.heads[0].cls.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    image = np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    a, b = plain.predict(image), half.predict(image)
    assert seen == [torch.bfloat16]
    assert b.boxes.dtype == b.scores.dtype == torch.float32 and len(b) > 0
    assert abs(len(a) - len(b)) <= max(2, len(a) // 5)  # the same detections, to bf16 rounding
    torch.testing.assert_close(b.scores[:3], a.scores[:3], atol=0.05, rtol=0.05)

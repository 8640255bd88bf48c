"""SSD300 and SSDLite320: output shapes, default-box order, the (c, p) decode, gradients,
first-step losses, user backbone weights, ONNX and a one-batch overfit."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch

from detkit.boxes import class_scores
from detkit.boxes.coder import SSDCoder
from detkit.config import load_config
from detkit.config.build import build_loss, build_model, param_groups
from detkit.models.ssd import SSD

NUM_CLASSES = 3
TARGETS = torch.tensor(
    [
        [0, 0, 4.0, 6.0, 20.0, 30.0],
        [0, 2, 30.0, 30.0, 60.0, 62.0],
        [1, 1, 10.0, 12.0, 50.0, 40.0],
    ]
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"ssd300": ["width_mult=0.25"], "ssdlite320": ["width_mult=0.5"]}


def _cfg(name, *overrides):
    return load_config(overrides=[f"model={name}", *overrides])


def _model(name="ssd300", num_classes=NUM_CLASSES, *overrides):
    torch.manual_seed(0)
    return build_model(_cfg(name, *SMALL[name], *overrides).model, num_classes)


@pytest.mark.parametrize("name", ["ssd300", "ssdlite320"])
@pytest.mark.parametrize(("h", "w"), [(320, 320), (416, 416), (640, 640), (224, 352)])
def test_output_rows_match_default_boxes(name, h, w):
    model = _model(name).eval()
    with torch.no_grad():
        raw = model(torch.rand(1, 3, h, w))
    priors = model.priors(h, w)
    per_cell = [2 + 2 * len(r) for r in model.aspect_ratios]
    sizes = [(math.ceil(h / s), math.ceil(w / s)) for s in model.strides]
    assert model.feature_sizes(h, w) == sizes
    assert priors.shape == (sum(a * y * x for a, (y, x) in zip(per_cell, sizes, strict=True)), 4)
    assert raw.shape == (1, priors.shape[0], 5 + NUM_CLASSES)


def test_ssd300_layout_at_300():
    """The SSD300 maps: 38, 19, 10, 5, 3 and (rounding up) 2; 4 or 6 boxes per cell."""
    model = _model("ssd300")
    assert model.feature_sizes(300, 300) == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (2, 2)]
    assert model.boxes_per_cell == [4, 6, 6, 6, 4, 4]
    assert model.priors(300, 300).shape[0] == 8732 - 4 + 16  # the last map is 2x2, not 1x1
    first = model.priors(300, 300)[:4]
    torch.testing.assert_close(first[0], torch.tensor([300 / 38 / 2, 300 / 38 / 2, 21.0, 21.0]))
    assert first[1, 2].item() == pytest.approx(math.sqrt(21 * 45))


def test_head_rows_follow_default_box_order():
    model = _model("ssdlite320").eval()
    maps = []
    for conf in model.conf:
        conf.register_forward_hook(lambda _m, _i, out: maps.append(out))
    with torch.no_grad():
        raw = model(torch.rand(1, 3, 64, 96))
    k = NUM_CLASSES + 1
    row = 0
    for level, m in enumerate(maps):
        a = model.boxes_per_cell[level]
        _, _, h, w = m.shape
        for r in torch.randint(0, h * w * a, (10,)).tolist():
            cell, box = divmod(r, a)
            y, x = divmod(cell, w)
            assert torch.equal(raw[0, row + r, 4:], m[0, box * k : (box + 1) * k, y, x])
        row += h * w * a
    assert row == raw.shape[1]


def test_decode_maps_softmax_to_c_and_p():
    model = _model("ssdlite320").eval()
    priors = model.priors(64, 64)
    raw = torch.randn(2, priors.shape[0], 5 + NUM_CLASSES) * 3
    boxes, c, p = model.decode(raw, priors)
    probs = raw[..., 4:].softmax(-1)
    torch.testing.assert_close(c, 1 - probs[..., 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p.sum(-1), torch.ones_like(c))
    torch.testing.assert_close(class_scores(c, p), probs[..., 1:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(boxes, SSDCoder().decode(raw[..., :4], priors))
    # a box certain to be background: c = 0 and finite p
    raw[0, 0, 4:] = torch.tensor([100.0, -100.0, -100.0, -100.0])
    _, c, p = model.decode(raw, priors)
    assert c[0, 0] == 0 and torch.isfinite(p).all()


def test_encode_decode_round_trip_through_raw():
    model = _model("ssd300")
    priors = model.priors(128, 128)
    idx = torch.tensor([0, 50, priors.shape[0] - 1])
    boxes = torch.tensor([[2.0, 3.0, 14.0, 20.0], [40.0, 10.0, 90.0, 60.0], [0, 0, 128, 100]])
    raw = torch.zeros(1, priors.shape[0], 5 + NUM_CLASSES)
    raw[0, idx, :4] = SSDCoder(model.coder.variances).encode(boxes, priors[idx])
    out, _, _ = model.decode(raw, priors)
    torch.testing.assert_close(out[0, idx], boxes, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("name", ["ssd300", "ssdlite320"])
def test_gradients_reach_every_parameter(name):
    """With an object of each level's box size, every level has positives."""
    model = _model(name)
    raw = model(torch.rand(2, 3, 128, 128))
    loss_fn = build_loss(model, _cfg(name).model)
    rows = []
    for k, ((n, _), s) in enumerate(zip(model.feature_sizes(128, 128), model.scales, strict=False)):
        c, d = 128 / n * ((n - 1) // 2 + 0.5), s * 128  # on a cell centre of level k, its size
        rows.append([k % 2, k % NUM_CLASSES, c - d / 2, c - d / 2, c + d / 2, c + d / 2])
    targets = torch.tensor(rows)
    loss = loss_fn(raw, targets, model.priors(128, 128), model.feature_sizes(128, 128)).sum()
    loss.backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing


@pytest.mark.parametrize("name", ["ssd300", "ssdlite320"])
def test_first_step_losses_match_the_prior(name, caplog):
    model = _model(name).eval()
    loss_fn = build_loss(model, _cfg(name).model)
    with caplog.at_level(logging.INFO, logger="detkit.models.losses.base"):
        raw = model(torch.rand(2, 3, 64, 64))
        parts = loss_fn(raw, TARGETS, model.priors(64, 64), model.feature_sizes(64, 64)).detach()
    # positives start at p_fg = 0.01 / C each: CE = ln(C / 0.01)
    assert parts[2] == pytest.approx(math.log(NUM_CLASSES / 0.01), rel=0.05)
    assert loss_fn.initial_check == []
    assert "initial losses" in caplog.text and "WARNING" not in caplog.text


def test_strides_must_match_the_layout():
    with pytest.raises(ValueError, match="strides"):
        build_model(_cfg("ssd300", "strides=[8,16,32]").model, 3)


def test_weight_decay_only_on_conv_weights():
    decay, no_decay = param_groups(_model("ssdlite320"), 5e-4)
    assert decay["params"] and all(p.ndim == 4 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])


def test_user_backbone_weights_from_a_local_file(tmp_path):
    source = _model("ssd300")
    torch.nn.init.constant_(source.backbone.conv4_3[0].weight, 0.5)
    path = tmp_path / "vgg.pt"
    torch.save(source.backbone.state_dict(), path)
    model = _model("ssd300", NUM_CLASSES, f"backbone_weights={path}")
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    # a detkit checkpoint's full model state dict works too (its backbone.* entries)
    torch.save({"model": source.state_dict()}, tmp_path / "ckpt.pt")
    again = _model("ssd300", NUM_CLASSES, f"backbone_weights={tmp_path / 'ckpt.pt'}")
    assert torch.equal(again.backbone.conv4_3[0].weight, source.backbone.conv4_3[0].weight)
    with pytest.raises(FileNotFoundError):
        _model("ssd300", NUM_CLASSES, f"backbone_weights={tmp_path / 'missing.pt'}")
    torch.save(_model("ssdlite320").backbone.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit"):
        _model("ssd300", NUM_CLASSES, f"backbone_weights={tmp_path / 'other.pt'}")


def test_forward_exports_to_onnx_and_matches(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _model("ssdlite320").eval()
    path = tmp_path / "ssdlite.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 3, 64, 64),),
            str(path),
            input_names=["images"],
            output_names=["raw"],
            dynamic_axes={"images": {0: "batch"}, "raw": {0: "batch"}},
            dynamo=False,
        )
    x = torch.rand(3, 3, 64, 64)
    (out,) = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x), atol=1e-4, rtol=1e-4)


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = _model("ssd300")
    assert isinstance(model, SSD)
    loss_fn = build_loss(model, _cfg("ssd300").model)
    images = torch.rand(2, 3, 64, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    priors, sizes = model.priors(64, 64), model.feature_sizes(64, 64)
    losses = []
    for _ in range(60):
        loss = loss_fn(model(images), TARGETS, priors, sizes).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0]
    from detkit.boxes import box_iou
    from detkit.inference.postprocess import detect

    for b, (boxes, _, labels) in enumerate(detect(model.eval(), images, priors, conf=0.3)):
        gt = TARGETS[TARGETS[:, 0] == b]
        assert set(labels.tolist()) == set(gt[:, 1].long().tolist())
        assert (box_iou(gt[:, 2:], boxes).amax(dim=1) > 0.5).all()


def test_a_checkpoint_loads_without_the_backbone_file_it_was_trained_from(tmp_path):
    from detkit.config.build import load_model
    from detkit.models.checkpoint import save_checkpoint

    path = tmp_path / "lite.pt"
    torch.save(_model("ssdlite320").backbone.state_dict(), path)
    cfg = _cfg("ssdlite320", *SMALL["ssdlite320"], f"backbone_weights={path}")
    trained = build_model(cfg.model, NUM_CLASSES)
    torch.nn.init.constant_(trained.backbone.c4[0][0].weight, 0.25)  # "trained" after the load
    save_checkpoint(
        {"config": cfg.to_dict(), "class_names": list("abcd")[:NUM_CLASSES],
         "model": trained.state_dict()},
        tmp_path / "best.pt",
    )  # fmt: skip
    path.unlink()  # deployed elsewhere: the backbone file is gone
    model, _, deploy = load_model(tmp_path / "best.pt")
    assert deploy.model["backbone_weights"] == ""  # the checkpoint holds every weight
    for k, v in trained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k

"""The YOLO n/s/m family: output shapes, prior order, decode round trip, gradients, first-step
losses, weight decay groups, tracing and a one-batch overfit."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from torch import nn

from detkit.boxes.coder import GridCoder
from detkit.config import load_config
from detkit.config.build import build_loss, build_model, param_groups
from detkit.models.yolo import YOLO, grid_deltas

NUM_CLASSES = 3
TARGETS = torch.tensor(
    [
        [0, 0, 4.0, 6.0, 20.0, 30.0],
        [0, 2, 30.0, 30.0, 60.0, 62.0],
        [1, 1, 10.0, 12.0, 50.0, 40.0],
    ]
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(name="yolo_n", *overrides):
    return load_config(overrides=[f"model={name}", *overrides])


def _model(name="yolo_n", num_classes=NUM_CLASSES, *overrides):
    torch.manual_seed(0)
    return build_model(_cfg(name, *overrides).model, num_classes)


@pytest.mark.parametrize(("h", "w"), [(320, 320), (416, 416), (640, 640), (224, 352)])
def test_output_rows_match_priors(h, w):
    model = _model().eval()
    with torch.no_grad():
        raw = model(torch.rand(1, 3, h, w))
    priors = model.priors(h, w)
    assert raw.shape == (1, priors.shape[0], 5 + NUM_CLASSES)
    cells = sum(math.ceil(h / s) * math.ceil(w / s) for s in (8, 16, 32))
    assert priors.shape[0] == model.num_anchors * cells
    assert model.feature_sizes(h, w) == [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]


@pytest.mark.parametrize("name", ["yolo_s", "yolo_m"])
def test_larger_sizes_build_and_match_priors(name):
    model = _model(name).eval()
    with torch.no_grad():
        raw = model(torch.rand(1, 3, 64, 96))
    assert raw.shape == (1, model.priors(64, 96).shape[0], 5 + NUM_CLASSES)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("yolo_n", 3.0e6, 4.0e6), ("yolo_s", 6e6, 9e6), ("yolo_m", 18e6, 25e6)],
)
def test_parameter_counts_near_reference_points(name, low, high):
    n = sum(p.numel() for p in _model(name, 80).parameters())
    assert low <= n <= high


KMEANS = "anchors=[[[16,16],[20,20],[26,26]],[[32,32],[41,41],[51,51]],[[63,63],[76,76],[92,92]]]"


@pytest.mark.parametrize("anchors", [[], [KMEANS]], ids=["one_per_cell", "three_kmeans"])
def test_head_rows_follow_prior_order(anchors):
    """Row r of the output is the head map at its prior's level, cell (gy, gx) and anchor."""
    model = _model("yolo_n", NUM_CLASSES, *anchors).eval()
    assert model.num_anchors == (3 if anchors else 1)
    maps = []
    for head in model.heads:
        head.register_forward_hook(lambda _m, _i, out: maps.append(out))
    with torch.no_grad():
        raw = model(torch.rand(1, 3, 64, 96))
    priors = model.priors(64, 96)
    k = 5 + NUM_CLASSES
    for r in torch.randperm(priors.shape[0])[:60].tolist():
        gx, gy, stride, aw, ah = priors[r].tolist()
        level = model.strides.index(int(stride))
        sizes = torch.tensor(model.anchors[level])
        a = int((sizes - torch.tensor([aw, ah])).abs().sum(1).argmin())
        assert torch.equal(raw[0, r], maps[level][0, a * k : (a + 1) * k, int(gy), int(gx)])


def test_decode_inverts_the_encoding_of_known_boxes():
    """Raw outputs built from the grid encoding of boxes (x, y through the inverse of
    2 * sigmoid - 0.5) decode back to those boxes; c and p are sigmoid and softmax."""
    model = _model().eval()
    priors = model.priors(64, 64)
    idx = torch.tensor([0, 7, 70, priors.shape[0] - 1])
    # centre offsets in and around the cell (neighbour cells predict (-0.5, 1.5)), sizes 0.5-3x
    enc = torch.tensor(
        [
            [0.2, 0.7, -0.69, 0.1],
            [1.3, -0.3, 0.7, 1.1],
            [-0.4, 0.5, 0.0, 0.0],
            [0.99, 0.01, 1.0, -1],
        ]
    )
    boxes = GridCoder().decode(enc, priors[idx])
    torch.testing.assert_close(GridCoder().encode(boxes, priors[idx]), enc, atol=1e-5, rtol=1e-5)
    raw = torch.zeros(1, priors.shape[0], 5 + NUM_CLASSES)
    raw[0, idx, :2] = torch.logit((enc[:, :2] + 0.5) / 2)
    raw[0, idx, 2:4] = enc[:, 2:]
    raw[0, idx, 4] = 2.0
    raw[0, idx, 5:] = torch.tensor([1.0, 2.0, 3.0])
    out_boxes, c, p = model.decode(raw, priors)
    torch.testing.assert_close(out_boxes[0, idx], boxes, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(c[0, idx], torch.sigmoid(torch.tensor(2.0)).expand(4))
    torch.testing.assert_close(p[0, idx[0]], torch.tensor([1.0, 2.0, 3.0]).softmax(0))
    assert torch.equal(grid_deltas(raw[0, idx, :4], 2.0)[:, 2:], enc[:, 2:])


@pytest.mark.parametrize(
    ("assigner", "anchors"), [("center", []), ("neighbors", []), ("neighbors", [KMEANS])]
)
def test_gradients_reach_every_parameter(assigner, anchors):
    # coupled heads: every level's head learns from the confidence of its background cells
    model = _model("yolo_n", NUM_CLASSES, f"assigner={assigner}", "head_width=0", *anchors)
    raw = model(torch.rand(2, 3, 64, 64))
    loss_fn = build_loss(model, _cfg().model)
    loss = loss_fn(raw, TARGETS, model.priors(64, 64), model.feature_sizes(64, 64)).sum()
    loss.backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing


def test_first_step_losses_match_the_prior(caplog):
    model = _model("yolo_n", 5).eval()
    loss_fn = build_loss(model, _cfg().model)
    targets = torch.tensor([[0, 2, 30.0, 30.0, 70.0, 80.0]])
    with caplog.at_level(logging.INFO, logger="detkit.models.losses.base"):
        raw = model(torch.rand(1, 3, 128, 128))
        parts = loss_fn(
            raw, targets, model.priors(128, 128), model.feature_sizes(128, 128)
        ).detach()
    assert parts[2] == pytest.approx(math.log(5), rel=0.05)
    assert torch.sigmoid(raw[..., 4]).mean().item() == pytest.approx(0.01, rel=0.3)
    assert loss_fn.initial_check == []
    assert "initial losses" in caplog.text and "WARNING" not in caplog.text


def test_first_step_check_warns_about_a_broken_head(caplog):
    model = _model().eval()
    for head in model.heads:  # forget the objectness prior: every cell starts at 0.5
        nn.init.zeros_(head.obj.bias)
    loss_fn = build_loss(model, _cfg().model)
    with caplog.at_level(logging.INFO, logger="detkit.models.losses.base"):
        raw = model(torch.rand(1, 3, 64, 64))
        loss_fn(raw, TARGETS[:1], model.priors(64, 64), model.feature_sizes(64, 64))
        loss_fn(raw, TARGETS[:1], model.priors(64, 64), model.feature_sizes(64, 64))
    assert loss_fn.initial_check == ["obj"]
    assert caplog.text.count("differs from a freshly initialised head") == 1  # first call only


def test_weight_decay_only_on_conv_weights():
    model = _model()
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["params"] and all(p.ndim == 4 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_forward_exports_to_onnx_and_matches(tmp_path):
    """No data-dependent Python control flow: the traced graph runs another batch size and
    gives the same raw output in onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    model = _model().eval()
    path = tmp_path / "yolo_n.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 3, 64, 96),),
            str(path),
            input_names=["images"],
            output_names=["raw"],
            dynamic_axes={"images": {0: "batch"}, "raw": {0: "batch"}},
            dynamo=False,
        )
    x = torch.rand(2, 3, 64, 96)
    (out,) = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x), atol=1e-4, rtol=1e-4)


def test_same_raw_type_in_train_and_eval():
    model = _model()
    x = torch.rand(2, 3, 64, 64)
    out_train = model.train()(x)
    out_eval = model.eval()(x)
    assert type(out_train) is type(out_eval) is torch.Tensor
    assert out_train.shape == out_eval.shape


def test_strides_are_fixed_by_the_backbone():
    with pytest.raises(ValueError, match="strides"):
        build_model(_cfg("yolo_n", "strides=[8,16]").model, 3)
    assert isinstance(_model(), YOLO) and _model().strides == [8, 16, 32]


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = _model()
    loss_fn = build_loss(model, _cfg().model)
    images = torch.rand(2, 3, 64, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # decayed, as training decays it: at a constant lr the loss oscillates (0.08-0.11x of the
    # first from step 60 on, with this CPU's kernels), so "<= 0.1x" would hang on rounding
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 80)
    priors, sizes = model.priors(64, 64), model.feature_sizes(64, 64)
    losses = []
    for _ in range(80):
        loss = loss_fn(model(images), TARGETS, priors, sizes).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0]  # 0.038x here
    # and the fitted model finds the objects through the shared decode path
    from detkit.boxes import box_iou
    from detkit.inference.postprocess import detect

    for b, (boxes, _, labels) in enumerate(detect(model.eval(), images, priors, conf=0.3)):
        gt = TARGETS[TARGETS[:, 0] == b]
        assert set(labels.tolist()) == set(gt[:, 1].long().tolist())
        assert (box_iou(gt[:, 2:], boxes).amax(dim=1) > 0.5).all()


def test_decoupled_head_lays_out_rows_like_the_coupled_head():
    """Channel k of a row is box (0-3), confidence (4) or class (5+) from the matching conv."""
    model = _model(
        "yolo_n",
        NUM_CLASSES,
        "head_width=16",
        "model.anchors=[[[8,8],[16,16]],[[32,32],[48,48]],[[64,64],[96,96]]]",
    ).eval()
    head = model.heads[0]
    feats = {}
    head.box.register_forward_hook(lambda m, i, o: feats.__setitem__("box", o))
    head.obj.register_forward_hook(lambda m, i, o: feats.__setitem__("obj", o))
    head.cls.register_forward_hook(lambda m, i, o: feats.__setitem__("cls", o))
    with torch.no_grad():
        raw = model(torch.rand(1, 3, 64, 64))
    a, h, w = 2, 8, 8
    rows = raw[0, : h * w * a].view(h, w, a, 5 + NUM_CLASSES)
    box = feats["box"][0].view(a, 4, h, w).permute(2, 3, 0, 1)
    obj = feats["obj"][0].view(a, h, w).permute(1, 2, 0)
    cls = feats["cls"][0].view(a, NUM_CLASSES, h, w).permute(2, 3, 0, 1)
    assert torch.equal(rows[..., :4], box) and torch.equal(rows[..., 4], obj)
    assert torch.equal(rows[..., 5:], cls)


def test_decoupled_head_starts_at_the_prior_and_learns():
    model = _model("yolo_n", 5, "head_width=16").eval()
    loss_fn = build_loss(model, _cfg().model)
    raw = model(torch.rand(1, 3, 128, 128))
    targets = torch.tensor([[0, 2, 30.0, 30.0, 70.0, 80.0]])
    parts = loss_fn(raw, targets, model.priors(128, 128), model.feature_sizes(128, 128)).detach()
    assert parts[2] == pytest.approx(math.log(5), rel=0.05)
    assert torch.sigmoid(raw[..., 4]).mean().item() == pytest.approx(0.01, rel=0.3)
    assert loss_fn.initial_check == []
    assert sum(p.numel() for p in _model("yolo_n", 80, "head_width=64").parameters()) > sum(
        p.numel() for p in _model("yolo_n", 80, "head_width=0").parameters()
    )


def test_decoupled_head_gradients_reach_every_parameter_when_every_level_has_an_object():
    model = _model("yolo_n", NUM_CLASSES, "assigner=center")
    targets = torch.tensor([[0, 0, 10.0, 10.0, 30.0, 30.0], [0, 1, 60.0, 60.0, 124.0, 124.0],
                            [1, 2, 0.0, 0.0, 250.0, 250.0]])  # fmt: skip
    raw = model(torch.rand(2, 3, 256, 256))
    loss = build_loss(model, _cfg().model)(
        raw, targets, model.priors(256, 256), model.feature_sizes(256, 256)
    ).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


@pytest.mark.parametrize(
    "option", ["block=c2f", "head_branches=conv", "head_branches=dw_cls", "head_branches=dw"]
)
def test_block_and_head_options_keep_the_output_and_learn(option):
    """(#20) C2f blocks and depthwise-separable head branches: the same rows as the default
    layout, the class logits still in ``heads.*.cls``, the prior at step one, gradients
    everywhere, fewer multiply-adds for the separable heads."""
    from detkit.models.summary import summary

    model = _model("yolo_n", NUM_CLASSES, option)
    base = _model("yolo_n", NUM_CLASSES, "head_branches=conv")
    raw = model(torch.rand(2, 3, 128, 128))
    assert raw.shape == base(torch.rand(2, 3, 128, 128)).shape
    assert all(h.cls.out_channels == NUM_CLASSES for h in model.heads)
    cfg = _cfg("yolo_n", option)
    loss_fn = build_loss(model, cfg.model)
    loss = loss_fn(raw, TARGETS, model.priors(128, 128), model.feature_sizes(128, 128)).sum()
    assert loss_fn.initial_check == []
    loss.backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    flops = summary(model, 320).flops
    if option.startswith("head_branches=dw"):
        assert flops < summary(base, 320).flops
        separable = [m for m in model.heads[0].cls_branch.modules() if isinstance(m, nn.Conv2d)]
        assert any(c.groups == c.in_channels > 1 for c in separable)


def test_yolo_n_is_the_network_the_cost_screen_chose():
    """(#20) yolo_n's stem and stride-4 stage at 16 / 32 channels, the stride-8/16/32 levels at
    80 / 160 / 320, the class branch depthwise-separable: 3,236,959 parameters and 1.89 GFLOPs at
    320 px for 80 classes (docs/architecture.md "Per-image cost"; a change of these is a change
    of the measured default)."""
    from detkit.models.summary import summary

    model = _model("yolo_n", 80)
    assert model.backbone.stem.conv.out_channels == 16
    assert model.backbone.stages[0][0].conv.out_channels == 32
    assert model.backbone.out_channels == [80, 160, 320]
    assert model.heads[0].cls_branch[0][0].conv.groups == 80  # depthwise
    assert model.heads[0].box_branch[0].conv.groups == 1  # the box branch stays full
    assert sum(p.numel() for p in model.parameters()) == 3_236_959
    assert round(summary(model, 320).flops / 1e9, 2) == 1.89


def test_unknown_block_or_head_option_names_the_key():
    with pytest.raises(ValueError, match=r"model\.block .c4. unknown; choose one of c3, c2f"):
        _model("yolo_n", NUM_CLASSES, "block=c4")
    with pytest.raises(ValueError, match=r"model\.head_branches .x. unknown; choose one of conv"):
        _model("yolo_n", NUM_CLASSES, "head_branches=x")
